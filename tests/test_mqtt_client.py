"""A paho client from a broker URL (services/mqtt/client.py): the login and TLS it carries."""

from __future__ import annotations

import ssl
import subprocess
import threading
from typing import Any

import pytest

from services.broker import Mosquitto
from services.mqtt import make_client
from services.settings import parse_mqtt_url


@pytest.fixture
def locked_broker(tmp_path):
    """A broker that lets in only alice with her password."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "s3cret"], check=True,
                   capture_output=True)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"allow_anonymous false\npassword_file {passwd}").start()
    yield broker
    broker.stop()


def login(url: str) -> Any:
    """The broker's answer to a client made from ``url``: its CONNACK reason."""
    parsed = parse_mqtt_url(url)
    client = make_client(parsed)
    answered = threading.Event()
    reasons: list[Any] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        reasons.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.connect_async(parsed.host, parsed.port)
    client.loop_start()
    try:
        assert answered.wait(5), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def test_the_url_s_user_and_password_log_in(locked_broker):
    host_port = locked_broker.url.split("//")[1]
    assert not login(f"mqtt://alice:s3cret@{host_port}").is_failure
    assert login(f"mqtt://alice:wrong@{host_port}").is_failure
    assert login(f"mqtt://{host_port}").is_failure  # no user: refused, not let in anonymously


def test_mqtts_speaks_tls_and_verifies_the_broker(broker):
    # a plain broker cannot finish a TLS handshake: the client must not fall back to plain
    host, port = broker.url.split("//")[1].split(":")
    client = make_client(parse_mqtt_url(f"mqtts://{host}:{port}"))
    with pytest.raises((ssl.SSLError, OSError)):
        client.connect(host, int(port))
