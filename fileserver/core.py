"""The fileserver's core: configs, ``published``/``files``, ``fetched`` and downloads in, effects out.

No sockets, no reactor, no database: the MQTT side (``service.py``) parses each message's topic,
hands the core the MAC and the payload, and carries out the effects it gets back (store writes,
retained messages, error reports, log lines). The core holds what is served (the
:class:`~fileserver.catalog.Catalog`), which phones are provisioned, which are in error, and what
the broker holds retained on ``devices/{mac}/published`` and ``devices/{mac}/files`` (our own
earlier messages).

What it decides: a bad config never replaces the last good files; only an empty ``config``
removes a device (received, or cleared while we were away: see :meth:`FileCore.replayed`); a
``published`` (or ``files``, ``enrolment``) is sent only when it differs from what the broker
holds. Enrolment (fileserver/enrolment.py) moves with configs, discoveries and downloads; each
move is saved, announced on ``enrolment``, and re-announces ``published`` when its URL or
whether it works changed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from fileserver.catalog import Catalog
from fileserver.enrolment import CONFLICT, ENROLLING, STATES, Change, Enrolments, Record
from fileserver.files import DeviceFiles, Rejected, ServedFile, decode_config
from fileserver.provision import ProvisionTracker, password_digest
from services.messages import Enrolment, Fetched, PayloadError, encode_json


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
class SaveRetired:
    """The phone moved past its pre-rotation HTTP password (sha256 ``digest``): saved."""

    mac: str
    digest: str


@dataclass(frozen=True)
class SaveEnrolment:
    """The device's enrolment moved (None: the device is gone)."""

    mac: str
    record: Record | None


@dataclass(frozen=True)
class Conflict:
    """Two addresses claimed an enrolling device: the error names both."""

    mac: str
    addresses: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Report:
    """Retained ``devices/{mac}/fetched``: a download this instance served."""

    mac: str
    fetched: Fetched


@dataclass(frozen=True)
class Missing:
    """Stored devices whose config the broker lost: still served."""

    macs: tuple[str, ...]


Effect = (Save | Remove | Announce | Refuse | Resolve | SaveFetch | SaveRetired | SaveEnrolment | Conflict
          | Report | Missing)

BOOTSTRAP, DEVICE = "bootstrap", "device"  # the two kinds of URL a file is served on


_SECONDS: dict[int, str] = {}


def iso(t: float) -> str:
    """``t`` as the contract writes dates: what ``datetime.fromtimestamp(t, timezone.utc)
    .isoformat(timespec="milliseconds")`` gives, with ``Z``.

    An enrolment message carries three dates, a boot storm's moves a few thousand a second: the
    date and time of day are formatted once per second they name (the cache is emptied, not
    trimmed, when it fills), only the milliseconds each time. They are cut from the time rounded
    to the microsecond as datetime rounds it (half to even), so the text is datetime's own."""
    fraction, whole = math.modf(t)
    second, micro = int(whole), round(fraction * 1e6)
    if micro < 0:  # before 1970: modf's parts carry the sign, datetime's microseconds do not
        second, micro = second - 1, micro + 1_000_000
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        text = _SECONDS[second] = datetime.fromtimestamp(second, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micro // 1000:03d}Z"


def conflict(record: Record) -> Conflict:
    first, second = record.addresses
    return Conflict(record.mac, record.addresses, (
        f"{record.mac} was claimed from two addresses while enrolling: {first} and {second}; its "
        f"Plug and Play URL serves no one until it is re-armed (pnp assign --rearm {record.mac})"))


def enrolment_payload(record: Record) -> bytes:
    payload = Enrolment(state=record.state, epoch=record.epoch, since=iso(record.since),
                        until=iso(record.until), bound=record.bound, candidate=record.candidate,
                        addresses=list(record.addresses) if record.state == CONFLICT else [],
                        reason=record.reason, mac=record.mac, at=iso(record.at))
    # to_json()'s bytes without dataclasses.asdict's deep copy (a third of the cost of an
    # enrolment move in a boot storm): the one list holds strings, which encode as they are
    return encode_json({**vars(payload), "v": payload.v})


def _candidate_only(change: Change) -> bool:
    """The move is an enrolling device's first candidate and nothing else."""
    before, record = change.before, change.record
    return (before is not None and before.state == ENROLLING and before.candidate is None
            and record.candidate is not None
            and record == replace(before, candidate=record.candidate, at=record.at))


def enrolment_record(mac: str, raw: bytes) -> Record | None:
    """A retained ``enrolment`` read back (a rebuilt store), or None when it is not usable."""
    try:
        e = Enrolment.from_json(raw)
        since, until, at = (datetime.fromisoformat(t).timestamp() for t in (e.since, e.until, e.at or e.since))
    except (PayloadError, ValueError, TypeError):
        return None
    if e.state not in STATES or e.epoch < 1 or (e.mac and e.mac != mac):
        return None
    return Record(mac, e.epoch, e.state, since, until, at, e.candidate, e.bound,
                  tuple(e.addresses), e.reason)


class FileCore:
    def __init__(self, catalog: Catalog, tracker: ProvisionTracker, errored: set[str],
                 enrolments: Enrolments, instance: str,
                 counters: Counter[str] | None = None) -> None:
        self.catalog = catalog
        self.tracker = tracker
        self.errored = errored
        # shared with the HTTP side's Gate, which lets downloads through by it
        self.enrolments = enrolments
        self.instance = instance
        self.counters: Counter[str] = counters if counters is not None else Counter()
        # what the broker holds retained on devices/{mac}/published (our own earlier messages)
        self.broker_published: dict[str, bytes] = {}
        # and on devices/{mac}/files: the same files without URLs, for the PBX and the operators
        self.broker_files: dict[str, bytes] = {}
        # and on devices/{mac}/enrolment
        self.broker_enrolment: dict[str, bytes] = {}
        self._seen_config: set[str] = set()
        self._restored: set[str] = set()  # whose published was put back since connecting
        # devices whose new candidate is saved but not announced yet (discovered(hold=True))
        self.held: dict[str, None] = {}
        self.configs_missing = 0  # stored devices whose config the broker did not replay

    def load(self, devices: list[DeviceFiles], now: float) -> list[Effect]:
        """What the store held at start: served at once, before the broker says anything.

        A device stored before enrolment existed (an older store) opens epoch 1 now: enrolling,
        or provisioned when its phone already came back for its main file."""
        for mac, record in self.enrolments.records.items():
            self.catalog.set_epoch(mac, record.epoch)
        effects: list[Effect] = []
        for device in devices:
            self.catalog.set(device)
            if self.enrolments.get(device.mac) is None:
                changes = self.enrolments.config(device.mac, device.enrol, now)
                main = device.main
                if main is not None and self.tracker.is_provisioned(device.mac, main.name, main.sha256):
                    changes += self.enrolments.provisioned(device.mac, now, "provisioned before enrolment")
                effects += self._changed(changes)
        return effects

    # --- the broker's side ---
    def connected(self) -> None:
        # What the broker holds is replayed now (published first): a broker restarted from an
        # older save may lack some, and those must not be taken as already published.
        self._seen_config = set()
        self.broker_published = {}
        self.broker_files = {}
        self.broker_enrolment = {}
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

    def enrolment(self, mac: str, raw: bytes | None) -> list[Effect]:
        """A retained ``enrolment`` (ours, from now or an earlier run); None: cleared. One for a
        device we hold no record of (the store was rebuilt) is taken back."""
        if raw is None:
            self.broker_enrolment.pop(mac, None)
            return []
        self.broker_enrolment[mac] = raw
        record = None if self.enrolments.get(mac) is not None else enrolment_record(mac, raw)
        return [] if record is None else self._changed(self.enrolments.adopt(record))

    def config(self, mac: str, data: Any, error: str | None, empty: bool, now: float) -> list[Effect]:
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
        # the epoch first, then the files: a first config indexes its device under its epoch's
        # token at once, not under epoch 0's first (each token is an HMAC)
        changes = self.enrolments.config(mac, device.enrol, now)
        self.catalog.set_epoch(mac, self.enrolments.epoch(mac))
        if self.catalog.devices.get(mac) != device:
            self.catalog.set(device)
            self.counters["configs_stored"] += 1
            effects.append(Save(device))
        effects += self._changed(changes)
        return effects + self._resolve(mac) + self._announce(mac)

    def watches(self, mac: str) -> bool:
        """Whether a discovery of ``mac`` can move anything: only an enrolling device's (a
        candidate, a conflict, or the window found passed). Any other discovery, most of a
        storm's (first boots, provisioned phones booting again), is not even parsed."""
        record = self.enrolments.get(mac)
        return record is not None and record.state == ENROLLING

    def discovered(self, mac: str, ip: str, now: float, hold: bool = False) -> list[Effect]:
        """A discovery (a retained one replayed included) of ``mac`` from ``ip``.

        ``hold``: a first candidate, the only move a discovery of a ready phone makes, is saved
        now (the store commits it with the rest of the turn: a fileserver killed later still
        pins it, so a spoofed SUBSCRIBE replayed after its restart is a conflict, not the
        candidate) but announced on ``enrolment`` by the next :meth:`release`, with every other
        one held meanwhile. Any other move of that device before then announces its record as
        it is, this candidate included."""
        changes = self.enrolments.discovered(mac, ip, now)
        if hold and len(changes) == 1 and _candidate_only(changes[0]):
            self.held[mac] = None
            return [SaveEnrolment(mac, changes[0].record)]
        return self._changed(changes)

    def release(self) -> list[Effect]:
        """The held candidates, announced (a device removed meanwhile was already)."""
        held, self.held = self.held, {}
        effects: list[Effect] = []
        for mac in held:
            effects += self._announce_enrolment(mac)
        return effects

    def sweep(self, now: float) -> list[Effect]:
        """Enrolment windows that passed: expired, and said so."""
        return self._changed(self.enrolments.sweep(now))

    def fetched_elsewhere(self, mac: str, data: Any, now: float) -> list[Effect]:
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
        effects: list[Effect] = []
        if outcome.changed:
            effects.append(SaveFetch(mac, name, outcome.served, outcome.provisioned_sha))
        device = self.catalog.devices.get(mac)
        client = data.get("client")
        if device is not None and data.get("epoch") == self.enrolments.epoch(mac) \
                and isinstance(client, str):
            # behind a load balancer the phone's downloads move enrolment on any instance
            effects += self._enrol_by_download(device, name, status, client, data.get("auth"),
                                               outcome.provisioned, now)
        return effects

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
        # an enrolment taken back from the broker (rebuilt store) whose config never came back
        for mac in [m for m in self.enrolments.records
                    if m not in self.catalog.devices and m not in self._seen_config]:
            effects += self._remove(mac, away=True)
        self.configs_missing = len(missing)
        if missing:
            effects.append(Missing(tuple(sorted(missing))))
        return effects

    def lost(self, macs: list[str]) -> list[Effect]:
        """``published``, ``files`` or ``enrolment`` messages the broker lost (the keeper found
        them gone or older): all are sent again, an unchanged one costs a message and nothing
        else."""
        effects: list[Effect] = []
        for mac in macs:
            if mac in self.catalog.devices:
                if mac not in self.broker_published:  # missing, not merely older
                    self._restored.add(mac)
                self.broker_published.pop(mac, None)
                self.broker_files.pop(mac, None)
                self.broker_enrolment.pop(mac, None)
                effects += self._announce(mac) + self._announce_enrolment(mac)
        return effects

    # --- the HTTP side's ---
    def served(self, device: DeviceFiles, served: ServedFile, status: int, client: str, ua: str,
               at: str, now: float, auth: str = BOOTSTRAP) -> list[Effect]:
        """A download this instance answered (200 or 304) on a ``bootstrap`` or ``device`` URL."""
        effects: list[Effect] = []
        outcome = self.tracker.record(device.mac, served.name, status, served.sha256)
        if outcome.changed:
            effects.append(SaveFetch(device.mac, served.name, outcome.served,
                                     outcome.provisioned_sha, outcome.provisioned))
        main = device.main
        if device.previous and status == 200 and main is not None and served.name == main.name:
            # the phone holds this revision's file, so the new password: the old one is done for
            # good (gate.Gate.passwords), not only until the next revision
            digest = password_digest(device.previous)
            if self.tracker.retire(device.mac, digest):
                effects.append(SaveRetired(device.mac, digest))
        epoch = self.enrolments.epoch(device.mac)
        effects += self._enrol_by_download(device, served.name, status, client, auth,
                                           outcome.provisioned, now)
        effects.append(Report(device.mac, Fetched(
            file=served.name, sha256=served.sha256, status=status, client=client, user_agent=ua,
            provisioned=outcome.provisioned, at=at, revision=device.revision, server=self.instance,
            auth=auth, epoch=epoch or None)))
        return effects

    def published_payload(self, mac: str) -> bytes:
        """What ``devices/{mac}/published`` says of a device we serve."""
        record = self.enrolments.get(mac)
        return self.catalog.published_json(mac, record is not None and record.state == ENROLLING)

    def provisioned_devices(self) -> int:
        return sum(
            1 for d in self.catalog.devices.values()
            if any(self.tracker.is_provisioned(d.mac, f.name, f.sha256) for f in d.files.values()))

    # --- internals ---
    def _enrol_by_download(self, device: DeviceFiles, name: str, status: int, client: str,
                           auth: Any, same_again: bool, now: float) -> list[Effect]:
        main = device.main
        if main is None or name != main.name:
            return []
        changes: list[Change] = []
        if auth == BOOTSTRAP and status == 200:
            changes += self.enrolments.bootstrap_served(device.mac, client, now)
        if auth == DEVICE:
            changes += self.enrolments.provisioned(device.mac, now, "fetched with its own credentials")
        elif same_again:
            changes += self.enrolments.provisioned(device.mac, now, "fetched the same file again")
        return self._changed(changes)

    def _changed(self, changes: list[Change]) -> list[Effect]:
        effects: list[Effect] = []
        for change in changes:
            record = change.record
            mac = record.mac
            self.held.pop(mac, None)  # announced now, a held candidate with it
            effects.append(SaveEnrolment(mac, record))
            self.catalog.set_epoch(mac, record.epoch)
            if change.conflict:
                effects.append(conflict(record))
            if change.resolved:
                self.errored.discard(mac)
                effects.append(Resolve(mac))
            if change.visible and mac in self.catalog.devices:
                effects += self._announce(mac)
        for mac in dict.fromkeys(c.record.mac for c in changes):
            effects += self._announce_enrolment(mac)
        return effects

    def _announce_enrolment(self, mac: str) -> list[Effect]:
        record = self.enrolments.get(mac)
        if record is None:
            return []
        payload = enrolment_payload(record)
        if self.broker_enrolment.get(mac) == payload:
            return []
        self.broker_enrolment[mac] = payload
        return [Announce(mac, payload, "enrolment")]

    def _announce(self, mac: str) -> list[Effect]:
        effects: list[Effect] = []
        # published first: it is what the notifier acts on; files only tells the PBX and operators
        payload = self.published_payload(mac)
        if self.broker_published.get(mac) != payload:
            self.broker_published[mac] = payload
            effects.append(Announce(mac, payload))
        files = self.catalog.files_json(mac)
        if self.broker_files.get(mac) != files:
            self.broker_files[mac] = files
            effects.append(Announce(mac, files, "files"))
        return effects

    def _remove(self, mac: str, away: bool = False) -> list[Effect]:
        effects: list[Effect] = []
        self.held.pop(mac, None)
        record = self.enrolments.remove(mac)
        if record is not None:
            effects.append(SaveEnrolment(mac, None))
            if record.state == CONFLICT:
                effects.append(Resolve(mac))
        if record is not None or mac in self.broker_enrolment:
            self.broker_enrolment.pop(mac, None)
            effects.append(Announce(mac, b"", "enrolment"))
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
        record = self.enrolments.get(mac)
        if record is not None and record.state == CONFLICT and len(record.addresses) == 2:
            # a refused config's error had replaced the conflict's: the conflict is still there
            return [conflict(record)]
        return [Resolve(mac)]
