"""Every MQTT topic of the contract, built and parsed in one place.

No other module writes a topic string by hand: services ask a :class:`Topics` for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, TypeGuard

DEVICE_KINDS = ("discovered", "assignment", "config", "published", "notify", "fetched", "error",
                "resync", "files", "enrolment", "rearm", "rotate")
# Retained commands to the generator (docs/MQTT.md): the PBX or the console writes them.
COMMAND_KINDS = ("rearm", "rotate")
SERVICES = ("listener", "generator", "fileserver", "notifier", "console")

_MAC = re.compile(r"[0-9a-f]{12}")
_SEGMENT = re.compile(r"[^/+#\0]+")


def is_mac(text: str) -> bool:
    """True for the contract's MAC form: 12 lowercase hex digits."""
    return bool(_MAC.fullmatch(text))


@dataclass(frozen=True)
class TopicInfo:
    """What a topic names. ``mac`` is the raw segment; ``mac_ok`` says if it is a proper MAC."""

    area: str  # "devices", "profiles" or "services"
    kind: str | None = None  # for devices: one of DEVICE_KINDS
    mac: str | None = None
    name: str | None = None  # profile name
    service: str | None = None
    instance: str | None = None

    @property
    def mac_ok(self) -> bool:
        return self.mac is not None and is_mac(self.mac)


class DeviceTopic(Protocol):
    """A :class:`TopicInfo` known to name a device by a proper MAC (see :func:`is_device_topic`)."""

    @property
    def area(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mac(self) -> str: ...


def is_device_topic(info: TopicInfo | None) -> TypeGuard[DeviceTopic]:
    """True when ``info`` names a device by a proper MAC; then ``info.mac`` and ``info.kind``
    are text (the type checker knows it too)."""
    return info is not None and info.area == "devices" and info.mac_ok


class Topics:
    def __init__(self, prefix: str = "pnp") -> None:
        self.prefix = prefix
        self._depth = prefix.count("/") + 1

    # --- building ---
    def device(self, mac: str, kind: str) -> str:
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device topic kind {kind!r}")
        if not _SEGMENT.fullmatch(mac):
            raise ValueError(f"not a topic segment: {mac!r}")
        return f"{self.prefix}/devices/{mac}/{kind}"

    def devices(self, kind: str = "+") -> str:
        """Subscription filter for one kind of every device (``kind='+'``: all kinds)."""
        if kind != "+" and kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device topic kind {kind!r}")
        return f"{self.prefix}/devices/+/{kind}"

    def profile(self, name: str) -> str:
        if not _SEGMENT.fullmatch(name):
            raise ValueError(f"not a topic segment: {name!r}")
        return f"{self.prefix}/profiles/{name}"

    def profiles(self) -> str:
        return f"{self.prefix}/profiles/+"

    def service(self, service: str, instance: str) -> str:
        return f"{self.prefix}/services/{service}/{instance}"

    def services(self) -> str:
        return f"{self.prefix}/services/+/+"

    def everything(self) -> str:
        return f"{self.prefix}/#"

    # --- parsing ---
    def parse(self, topic: str) -> TopicInfo | None:
        """What a topic of ours names, or None for any other topic."""
        if not topic.startswith(self.prefix + "/"):
            return None
        rest = topic[len(self.prefix) + 1 :].split("/")
        if len(rest) == 3 and rest[0] == "devices" and rest[2] in DEVICE_KINDS and rest[1]:
            return TopicInfo("devices", kind=rest[2], mac=rest[1])
        if len(rest) == 2 and rest[0] == "profiles" and rest[1]:
            return TopicInfo("profiles", name=rest[1])
        if len(rest) == 3 and rest[0] == "services" and rest[1] and rest[2]:
            return TopicInfo("services", service=rest[1], instance=rest[2])
        return None
