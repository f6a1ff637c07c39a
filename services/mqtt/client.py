"""A paho client for a broker URL: the one place that turns an ``MqttUrl`` into a login."""

from __future__ import annotations

import ssl
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from services.settings import MqttUrl

C = TypeVar("C", bound=mqtt.Client)


def make_client(url: MqttUrl, client_id: str = "", client_class: type[C] = mqtt.Client) -> C:  # type: ignore[assignment]
    """An MQTT v5 paho client (callback API 2) set up for ``url``: its user and password, and
    TLS verified against the system's CAs for ``mqtts://``. Not connected. An empty
    ``client_id`` lets the broker choose one."""
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set_context(ssl.create_default_context())
    return client
