"""The fileserver's core: configs, ``published``/``files``, ``fetched`` and downloads in, effects out.

No sockets, no reactor, no database: the MQTT side (``service.py``) parses each message's topic,
hands the core the MAC and the payload, and carries out the effects it gets back (store writes,
retained messages, error reports, log lines). The core holds what is served (the
:class:`~fileserver.catalog.Catalog`), which phones are provisioned, which are in error, and what
the broker holds retained on ``devices/{mac}/published`` and ``devices/{mac}/files`` (our own
earlier messages).

What it decides: a bad config never replaces the last good files; only an empty ``config``
removes a device (received, or cleared while we were away: see :meth:`FileCore.replayed`); a
``published`` (or ``files``) is sent only when it differs from what the broker holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, MutableMapping

from fileserver.catalog import Catalog
from fileserver.files import DeviceFiles, Rejected, ServedFile, decode_config
from fileserver.provision import ProvisionTracker
from services.messages import Fetched


@dataclass(frozen=True)
class Save:
    """Store the device's files (they are served from now on)."""

    device: DeviceFiles


@dataclass(frozen=True)
class Remove:
    """The device's files are no longer served: out of the store. ``away``: its config was
    cleared while we were not connected."""

    mac: str
    away: bool = False


@dataclass(frozen=True)
class Announce:
    """Retained ``devices/{mac}/{kind}``, ``published`` or ``files`` (empty: cleared)."""

    mac: str
    payload: bytes
    kind: str = "published"


@dataclass(frozen=True)
class Refuse:
    """A config refused: the error topic says why, and the device is marked in error."""

    mac: str
    code: str
    message: str
    field: str | None


@dataclass(frozen=True)
class Resolve:
    """The device is no longer in error: its error topic is cleared."""

    mac: str


@dataclass(frozen=True)
class SaveFetch:
    """A file's download state moved: saved. ``provisioned``: it just became provisioned."""

    mac: str
    name: str
    served: str
    provisioned_sha: str
    provisioned: bool = False


@dataclass(frozen=True)
class SaveIp:
    """The address a phone was discovered from (None: forgotten)."""

    mac: str
    ip: str | None


@dataclass(frozen=True)
class Report:
    """Retained ``devices/{mac}/fetched``: a download this instance served."""

    mac: str
    fetched: Fetched


@dataclass(frozen=True)
class Missing:
    """Stored devices whose config the broker lost: still served."""

    macs: tuple[str, ...]


Effect = Save | Remove | Announce | Refuse | Resolve | SaveFetch | SaveIp | Report | Missing


class FileCore:
    def __init__(self, catalog: Catalog, tracker: ProvisionTracker, errored: set[str],
                 discovered_ip: MutableMapping[str, str], instance: str,
                 counters: Counter[str] | None = None) -> None:
        self.catalog = catalog
        self.tracker = tracker
        self.errored = errored
        # shared with the HTTP side's Policy, which pins each phone's downloads to it
        self.discovered_ip = discovered_ip
        self.instance = instance
        self.counters: Counter[str] = counters if counters is not None else Counter()
        # what the broker holds retained on devices/{mac}/published (our own earlier messages)
        self.broker_published: dict[str, bytes] = {}
        # and on devices/{mac}/files: the same files without URLs, for the PBX and the operators
        self.broker_files: dict[str, bytes] = {}
        self._seen_config: set[str] = set()
        self._restored: set[str] = set()  # whose published was put back since connecting
        self.configs_missing = 0  # stored devices whose config the broker did not replay

    def load(self, devices: list[DeviceFiles]) -> None:
        """What the store held at start: served at once, before the broker says anything."""
        for device in devices:
            self.catalog.set(device)

    # --- the broker's side ---
    def connected(self) -> None:
        # What the broker holds is replayed now (published first): a broker restarted from an
        # older save may lack some, and those must not be taken as already published.
        self._seen_config = set()
        self.broker_published = {}
        self.broker_files = {}
        self._restored = set()

    def published(self, mac: str, raw: bytes | None) -> None:
        """A retained ``published`` (ours, from now or an earlier run); None: cleared."""
        if raw is None:
            self.broker_published.pop(mac, None)
        else:
            self.broker_published[mac] = raw

    def files(self, mac: str, raw: bytes | None) -> None:
        """A retained ``files`` (ours, from now or an earlier run); None: cleared."""
        if raw is None:
            self.broker_files.pop(mac, None)
        else:
            self.broker_files[mac] = raw

    def config(self, mac: str, data: Any, error: str | None, empty: bool) -> list[Effect]:
        """A ``config``: ``data`` is its decoded JSON, ``error`` why it could not be decoded."""
        self._seen_config.add(mac)
        if empty:
            return self._remove(mac) + self._resolve(mac)
        try:
            if error:
                raise Rejected("payload", error)
            device = decode_config(mac, data)
        except Rejected as exc:
            self.counters["configs_rejected"] += 1
            self.errored.add(mac)
            return [Refuse(mac, exc.code, str(exc), exc.field)]
        effects: list[Effect] = []
        if self.catalog.devices.get(mac) != device:
            self.catalog.set(device)
            self.counters["configs_stored"] += 1
            effects.append(Save(device))
        return effects + self._resolve(mac) + self._announce(mac)

    def fetched_elsewhere(self, mac: str, data: Any) -> list[Effect]:
        """A ``fetched`` of another instance: behind a load balancer a phone's two downloads may
        land on different instances, and what the others served counts here too."""
        if not isinstance(data, dict) or data.get("server") in (None, "", self.instance):
            return []  # ours (or from a fileserver too old to say): already counted when served
        name, sha, status = data.get("file"), data.get("sha256"), data.get("status")
        if not isinstance(name, str) or not isinstance(sha, str) or status not in (200, 304):
            return []
        outcome = self.tracker.record(mac, name, status, sha)
        if data.get("provisioned") is True and not outcome.provisioned:
            outcome = self.tracker.record(mac, name, 304, sha)
        if not outcome.changed:
            return []
        return [SaveFetch(mac, name, outcome.served, outcome.provisioned_sha)]

    def discovered(self, mac: str, ip: str | None) -> list[Effect]:
        if self.discovered_ip.get(mac) == ip:
            return []
        if ip is None:
            self.discovered_ip.pop(mac, None)
        else:
            self.discovered_ip[mac] = ip
        return [SaveIp(mac, ip)]

    def replayed(self, lost_ours: bool) -> list[Effect]:
        """After a (re)connection's replay, a stored device whose config did not come back:

        - its ``published`` did come back: the config was cleared while we were away (it was
          published before our ``published``, so a broker that kept the later one kept it too,
          unless an empty payload cleared it): the device is removed;
        - its ``published`` is gone too, and the broker lost nothing of ours (our marker is
          intact): another fileserver cleared it after the config was cleared: removed;
        - its ``published`` is gone too, and the broker lost messages of ours (or the keeper
          just put this one back): the broker lost both. That is no unassignment: the device
          stays served, and the generator puts back its config."""
        cleared, missing = [], []
        for mac in [m for m in self.catalog.devices if m not in self._seen_config]:
            if mac in self._restored or (lost_ours and mac not in self.broker_published):
                missing.append(mac)
            else:
                cleared.append(mac)
        effects: list[Effect] = []
        for mac in cleared:
            effects += self._remove(mac, away=True)
        self.configs_missing = len(missing)
        if missing:
            effects.append(Missing(tuple(sorted(missing))))
        return effects

    def lost(self, macs: list[str]) -> list[Effect]:
        """``published`` or ``files`` messages the broker lost (the keeper found them gone or
        older): both are sent again, an unchanged one costs a message and nothing else."""
        effects: list[Effect] = []
        for mac in macs:
            if mac in self.catalog.devices:
                if mac not in self.broker_published:  # missing, not merely older
                    self._restored.add(mac)
                self.broker_published.pop(mac, None)
                self.broker_files.pop(mac, None)
                effects += self._announce(mac)
        return effects

    # --- the HTTP side's ---
    def served(self, device: DeviceFiles, served: ServedFile, status: int, client: str, ua: str,
               at: str) -> list[Effect]:
        """A download this instance answered (200 or 304)."""
        effects: list[Effect] = []
        outcome = self.tracker.record(device.mac, served.name, status, served.sha256)
        if outcome.changed:
            effects.append(SaveFetch(device.mac, served.name, outcome.served,
                                     outcome.provisioned_sha, outcome.provisioned))
        effects.append(Report(device.mac, Fetched(
            file=served.name, sha256=served.sha256, status=status, client=client, user_agent=ua,
            provisioned=outcome.provisioned, at=at, revision=device.revision, server=self.instance)))
        return effects

    def provisioned_devices(self) -> int:
        return sum(
            1 for d in self.catalog.devices.values()
            if any(self.tracker.is_provisioned(d.mac, f.name, f.sha256) for f in d.files.values()))

    # --- internals ---
    def _announce(self, mac: str) -> list[Effect]:
        effects: list[Effect] = []
        # published first: it is what the notifier acts on; files only tells the PBX and operators
        payload = self.catalog.published(mac).to_json()
        if self.broker_published.get(mac) != payload:
            self.broker_published[mac] = payload
            effects.append(Announce(mac, payload))
        files = self.catalog.files(mac).to_json()
        if self.broker_files.get(mac) != files:
            self.broker_files[mac] = files
            effects.append(Announce(mac, files, "files"))
        return effects

    def _remove(self, mac: str, away: bool = False) -> list[Effect]:
        effects: list[Effect] = []
        had = self.catalog.remove(mac) is not None
        if had:
            self.tracker.forget(mac)
            self.counters["devices_removed"] += 1
            effects.append(Remove(mac, away))
        if had or mac in self.broker_published:
            self.broker_published.pop(mac, None)
            effects.append(Announce(mac, b""))
        if had or mac in self.broker_files:
            self.broker_files.pop(mac, None)
            effects.append(Announce(mac, b"", "files"))
        return effects

    def _resolve(self, mac: str) -> list[Effect]:
        if mac not in self.errored:
            return []
        self.errored.discard(mac)
        return [Resolve(mac)]
