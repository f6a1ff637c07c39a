"""Enrolment: when a device may be provisioned through Plug and Play, and from which address.

Sans-I/O: configs, discoveries and downloads come in with the time, :class:`Change` values come
out; the core turns them into store writes and retained messages. A device is *enrolling* from a
new or changed assignment (or a re-arm) until the phone is provisioned, for at most ``window``
seconds. While it enrolls, the first address that discovers it is its *candidate* and the first
address that completes the bootstrap download is its *bound* address; a discovery from any other
address is a *conflict*: someone else claims the MAC, so nothing more goes out until an operator
re-arms the device (docs/SECURITY.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

ENROLLING = "enrolling"
PROVISIONED = "provisioned"
EXPIRED = "expired"
CONFLICT = "conflict"
STATES = (ENROLLING, PROVISIONED, EXPIRED, CONFLICT)


@dataclass(frozen=True)
class Key:
    """What a config's ``enrol`` says: the assignment it renders and the last re-arm's id."""

    assignment: str
    rearm: str


@dataclass(frozen=True)
class Record:
    mac: str
    epoch: int
    state: str
    since: float
    until: float
    at: float  # when the record last changed
    candidate: str | None = None
    bound: str | None = None
    addresses: tuple[str, ...] = ()
    reason: str = ""
    # the config's enrol the epoch was opened for; None: a config without one (older generator)
    key: Key | None = None
    # taken back from the retained enrolment topic (rebuilt store): the key is not known, and
    # the next config's is taken as this epoch's instead of opening a new one
    adopted: bool = False

    def enrolling(self, now: float) -> bool:
        return self.state == ENROLLING and now < self.until


@dataclass(frozen=True)
class Change:
    """The record moved (``before`` None: it is new)."""

    record: Record
    before: Record | None

    @property
    def conflict(self) -> bool:
        """It just became a conflict: the error names both addresses."""
        return self.record.state == CONFLICT and (self.before is None or self.before.state != CONFLICT)

    @property
    def resolved(self) -> bool:
        """A conflict just ended (re-armed): its error is cleared."""
        return self.before is not None and self.before.state == CONFLICT and self.record.state != CONFLICT

    @property
    def visible(self) -> bool:
        """What ``published`` says changed: the URL (epoch) or whether it works (enrolling)."""
        b, r = self.before, self.record
        return b is None or b.epoch != r.epoch or (b.state == ENROLLING) != (r.state == ENROLLING)


class Enrolments:
    def __init__(self, window: float, records: dict[str, Record] | None = None) -> None:
        self.window = window
        self.records: dict[str, Record] = dict(records or {})

    def get(self, mac: str) -> Record | None:
        return self.records.get(mac)

    def epoch(self, mac: str) -> int:
        record = self.records.get(mac)
        return record.epoch if record is not None else 0

    def enrolling(self, mac: str, now: float) -> bool:
        record = self.records.get(mac)
        return record is not None and record.enrolling(now)

    # --- events ---
    def config(self, mac: str, key: Key | None, now: float) -> list[Change]:
        """An accepted config whose ``enrol`` is ``key``: a new epoch when it differs."""
        changes = self._expire(mac, now)
        record = self.records.get(mac)
        if record is None:
            return changes + self._set(None, Record(mac, 1, ENROLLING, now, now + self.window, now,
                                                    reason="assigned", key=key))
        if record.adopted:
            return changes + self._set(record, replace(record, key=key, adopted=False))
        if key is None or key == record.key:
            return changes  # an older generator's configs: the first one opened the epoch
        if record.key is None or key.rearm != record.key.rearm:
            if record.key is not None or key.rearm:
                # the operator re-armed it: whatever was bound or claimed is forgotten
                return changes + self._set(record, self._open(record, key, now, "re-armed",
                                                              bound=None))
        if record.state == CONFLICT:
            # only a re-arm ends a conflict: the error tells the operator so
            return changes + self._set(record, replace(record, key=key, at=now))
        return changes + self._set(record, self._open(record, key, now, "assignment changed",
                                                      bound=record.bound))

    def discovered(self, mac: str, ip: str, now: float) -> list[Change]:
        """A discovery of ``mac`` from ``ip`` (a retained one replayed included)."""
        changes = self._expire(mac, now)
        record = self.records.get(mac)
        if record is None or not record.enrolling(now):
            return changes
        first = record.bound or record.candidate
        if record.bound and ip != record.bound or record.candidate and ip != record.candidate:
            assert first is not None
            return changes + self._set(record, replace(
                record, state=CONFLICT, addresses=(first, ip), at=now,
                reason=f"discovered from {ip} while enrolling from {first}"))
        if record.candidate is None:
            return changes + self._set(record, replace(record, candidate=ip, at=now))
        return changes

    def bootstrap_served(self, mac: str, ip: str, now: float) -> list[Change]:
        """The main file was served completely on the bootstrap URL to ``ip``."""
        record = self.records.get(mac)
        if record is None or record.bound is not None or not record.enrolling(now):
            return []
        return self._set(record, replace(record, bound=ip, at=now))

    def provisioned(self, mac: str, now: float, reason: str) -> list[Change]:
        """The phone came back for its file (with its credentials, or the same sha256 again)."""
        record = self.records.get(mac)
        if record is None or not record.enrolling(now):
            return []
        return self._set(record, replace(record, state=PROVISIONED, at=now, reason=reason))

    def sweep(self, now: float) -> list[Change]:
        """Every enrolling device whose window has passed becomes expired."""
        changes: list[Change] = []
        for mac in [m for m, r in self.records.items() if r.state == ENROLLING and now >= r.until]:
            changes += self._expire(mac, now)
        return changes

    def adopt(self, record: Record) -> list[Change]:
        """A record from the retained topic, for a device we know nothing of (rebuilt store)."""
        if record.mac in self.records:
            return []
        return self._set(None, replace(record, adopted=True))

    def remove(self, mac: str) -> Record | None:
        return self.records.pop(mac, None)

    # --- internals ---
    def _open(self, record: Record, key: Key, now: float, reason: str, bound: str | None) -> Record:
        return Record(record.mac, record.epoch + 1, ENROLLING, now, now + self.window, now,
                      bound=bound, reason=reason, key=key)

    def _expire(self, mac: str, now: float) -> list[Change]:
        record = self.records.get(mac)
        if record is None or record.state != ENROLLING or now < record.until:
            return []
        return self._set(record, replace(record, state=EXPIRED, at=now,
                                         reason="enrolment window passed without provisioning"))

    def _set(self, before: Record | None, record: Record) -> list[Change]:
        self.records[record.mac] = record
        return [Change(record, before)]
