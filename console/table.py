"""The device table: every device, profile and service instance, built from bus messages.

Sans-I/O: :meth:`DeviceTable.on_raw` takes one device message (topic already parsed, payload as
it came) and the time, and says whether the device's row may have changed; the glue decides whom
to tell. Payloads are kept as bytes and parsed the first time anything reads them: the console
takes every message of every phone, and during a boot storm most of them (a phone's first three
``enrolment`` states, its ``sent`` NOTIFY status, every payload while no browser is open) are
superseded before anyone looks. A device's stage is derived by ``tools.devices.fold`` (the same
rules as ``pnp devices``) when it is read after a change, and kept: the list page only sorts
and filters what is already folded.

The timeline of a device starts with its retained state when the console starts and grows with
every live message; it is held in memory (the last ``TIMELINE_LENGTH`` events per device).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.messages import PayloadError, decode_json
from tools.devices import STAGES as DEVICE_STAGES
from tools.devices import Device, fold
from tools.monitor import describe

TIMELINE_LENGTH = 60

# The stages the console knows, in the order of the flow, with their label; a stage nobody
# registered is still shown, by name. The enrolment state is not a stage: a column of its own.
STAGE_LABELS: dict[str, str] = {
    "awaiting-assignment": "awaiting assignment",
    "assigned": "assigned (not seen yet)",
    "discovered": "discovered",
    "rendered": "rendered",
    "published": "published",
    "notified": "notified",
    "fetched": "fetched",
    "provisioned": "provisioned",
    "error": "error",
}
STAGES: tuple[str, ...] = tuple(DEVICE_STAGES) + tuple(k for k in STAGE_LABELS if k not in DEVICE_STAGES)

# Who comes first on the list: phones waiting for someone to assign them, then problems.
_PRIORITY = {"awaiting-assignment": 0, "error": 1}


class Payload:
    """One message's payload: the bytes as they came, parsed the first time it is read (then the
    bytes are let go). ``data`` is the parsed JSON, None for an empty payload, and
    ``{"_error": why}`` for one that is not JSON: fold() and describe() say so instead of
    crashing."""

    __slots__ = ("_raw", "_data", "empty")

    def __init__(self, raw: bytes) -> None:
        self._raw: bytes | None = raw
        self._data: Any = None
        # an empty payload clears the topic (unassigned, resolved, removed); so does a JSON null,
        # as it did when payloads were parsed on arrival
        self.empty = not raw or raw.strip() == b"null"

    @classmethod
    def parsed(cls, data: Any) -> "Payload":
        """A payload already parsed (None: an empty one)."""
        payload = cls(b"")
        payload._raw, payload._data, payload.empty = None, data, data is None
        return payload

    @property
    def data(self) -> Any:
        raw = self._raw
        if raw is not None:
            self._raw = None
            try:
                self._data = decode_json(raw) if raw else None
            except PayloadError as exc:
                self._data = {"_error": str(exc)}
        return self._data


class Event:
    """One message in a device's timeline. Its time and words are worked out when someone
    looks: in a boot storm most events are never shown."""

    __slots__ = ("received", "kind", "payload", "retained")

    def __init__(self, received: str, kind: str, payload: Payload, retained: bool) -> None:
        self.received = received  # when the console received it
        self.kind = kind  # discovered, assignment, config, files, notify, fetched, error, ...
        self.payload = payload
        self.retained = retained  # part of the state the console found at start, not seen happen

    @property
    def data(self) -> Any:
        return self.payload.data

    @property
    def at(self) -> str:
        """The payload's own time when it has one, else when the console received it."""
        return _time_of(self.kind, self.payload.data) or self.received

    @property
    def text(self) -> str:
        return describe(self.kind, self.payload.data)

    @property
    def sha256(self) -> str:
        data = self.payload.data
        if self.kind == "fetched" and isinstance(data, dict) and isinstance(data.get("sha256"), str):
            return data["sha256"]
        return ""


@dataclass
class Entry:
    mac: str
    payloads: dict[str, Payload] = field(default_factory=dict)
    timeline: deque = field(default_factory=lambda: deque(maxlen=TIMELINE_LENGTH))
    first_seen: str = ""
    # Folded when read, not per message: a row that changes four times between two looks is
    # folded once.
    _device: Device | None = None

    @property
    def device(self) -> Device:
        if self._device is None:
            self._device = fold(self.mac, {kind: p.data for kind, p in self.payloads.items()})
        return self._device


@dataclass(frozen=True)
class Filter:
    stage: str = ""
    vendor: str = ""
    text: str = ""

    def matches(self, d: Device) -> bool:
        if self.stage and d.stage != self.stage:
            return False
        if self.vendor and d.vendor.lower() != self.vendor.lower():
            return False
        if self.text:
            needle = self.text.lower().replace(":", "").replace("-", "") if _looks_like_mac(self.text) else self.text.lower()
            hay = " ".join((d.mac, d.vendor, d.model, d.firmware, d.ip, d.stage, d.enrolment_detail)).lower()
            if needle not in hay:
                return False
        return True


def _looks_like_mac(text: str) -> bool:
    stripped = text.replace(":", "").replace("-", "")
    return len(stripped) >= 2 and all(c in "0123456789abcdefABCDEF" for c in stripped)


class DeviceTable:
    """Everything the console shows, from the retained topics and what follows them."""

    def __init__(self) -> None:
        self.devices: dict[str, Entry] = {}
        self.profiles: dict[str, Any] = {}
        self.services: dict[tuple[str, str], Any] = {}
        self.profiles_version = 0  # what a row shows may depend on the profiles (masking)

    # --- input ---
    def on_device(self, mac: str, kind: str, data: Any, retained: bool, now: str) -> bool:
        """One ``devices/{mac}/{kind}`` message already parsed (``data`` None: empty payload).
        True when the device's row may have changed."""
        return self.on_payload(mac, kind, Payload.parsed(data), retained, now)

    def on_raw(self, mac: str, kind: str, raw: bytes, retained: bool, now: str) -> bool:
        """One ``devices/{mac}/{kind}`` message as it came (``b""``: empty payload), parsed only
        once something reads it. True when the device's row may have changed."""
        return self.on_payload(mac, kind, Payload(raw), retained, now)

    def on_payload(self, mac: str, kind: str, payload: Payload, retained: bool, now: str) -> bool:
        """What :meth:`on_device` and :meth:`on_raw` share: the payload becomes the device's
        ``kind`` (an empty one clears it) and an event of its timeline."""
        entry = self.devices.get(mac)
        empty = payload.empty
        if entry is None:
            if empty:
                return False  # clearing something of a device we never knew
            entry = self.devices[mac] = Entry(mac, first_seen=now)
        if empty:
            entry.payloads.pop(kind, None)
        else:
            entry.payloads[kind] = payload
        entry.timeline.append(Event(now, kind, payload, retained))
        if not entry.payloads:
            del self.devices[mac]
            return True
        entry._device = None
        return True

    def on_profile(self, name: str, data: Any) -> None:
        self.profiles_version += 1
        if data is None:
            self.profiles.pop(name, None)
        else:
            self.profiles[name] = data

    def on_service(self, service: str, instance: str, data: Any) -> None:
        if data is None:
            self.services.pop((service, instance), None)
        else:
            self.services[(service, instance)] = data

    # --- output ---
    def device(self, mac: str) -> Device | None:
        entry = self.devices.get(mac)
        return entry.device if entry else None

    def rows(self, where: Filter = Filter()) -> list[Device]:
        """Devices to list: waiting ones first, then errors, then the rest; newest first in each."""
        found = [e.device for e in self.devices.values() if where.matches(e.device)]
        found.sort(key=lambda d: (d.updated_at, d.mac), reverse=True)
        found.sort(key=lambda d: _PRIORITY.get(d.stage, 2))
        return found

    def vendors(self) -> list[str]:
        return sorted({e.device.vendor for e in self.devices.values() if e.device.vendor})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.devices.values():
            out[e.device.stage] = out.get(e.device.stage, 0) + 1
        return out

    def timeline(self, mac: str) -> list[Event]:
        entry = self.devices.get(mac)
        return list(entry.timeline) if entry else []

    def payload(self, mac: str, kind: str) -> Any:
        """The parsed payload of a device's ``kind`` (None: none retained)."""
        entry = self.devices.get(mac)
        found = entry.payloads.get(kind) if entry else None
        return found.data if found is not None else None

    def users_of(self, profile: str) -> list[str]:
        """MACs whose assignment names ``profile`` (every assigned device for ``default``)."""
        out = []
        for mac, entry in self.devices.items():
            found = entry.payloads.get("assignment")
            assignment = found.data if found is not None else None
            if not isinstance(assignment, dict):
                continue
            if profile == "default" or assignment.get("profile") == profile:
                out.append(mac)
        return sorted(out)


def _time_of(kind: str, data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    value = data.get("seen_at" if kind == "discovered" else "at")
    return value if isinstance(value, str) else ""


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage)


__all__ = ["DeviceTable", "Event", "Filter", "Payload", "STAGES", "stage_label"]
