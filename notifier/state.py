"""The notifier's own memory: what it knows of each phone, and which NOTIFYs it already sent.

Everything but the sent-NOTIFY log can be rebuilt from the broker's retained messages; the log
cannot, and it is what keeps a restart (and the retained replay that follows it) from notifying
a phone a second time. So all of it lives in a sqlite-utils database, mirrored in memory so that
deciding never waits on a query. WAL with ``synchronous=NORMAL``: a commit does not fsync, and a
power cut loses at most the last few records, never the file. A commit that fails (disk full)
keeps its records and retries (services/store.py). A store that cannot be opened is moved aside
and a fresh one made: the retained messages refill it, and the notify window keeps the replayed
old discoveries from being notified again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple

import sqlite_utils

from services.messages import Discovered, Published, ResyncCredentials
from services.store import HealthLike, Writes, open_database

# Credentials kept per phone: the newest few revisions. A phone challenging a resync still has
# the password of the config it runs, which may be older than the newest one.
CREDENTIALS_KEPT = 4


@dataclass
class Device:
    """A phone's last discovery, with our side of its dialog."""

    discovered: Discovered
    seen: float  # epoch seconds of its ``seen_at``
    cseq: int = 0  # our last CSeq in the dialog of ``discovered.call_id``


@dataclass
class Provision:
    """What ``fetched`` last said about a phone."""

    provisioned: bool
    revision: int | None
    at: float  # epoch seconds


class SentKey(NamedTuple):
    """One NOTIFY transaction per (MAC, Call-ID, revision, kind), whatever arrives how often.
    A tuple: looked up in the sent log for every discovery and publication, hashed in C."""

    mac: str
    call_id: str
    revision: int
    kind: str


@dataclass(frozen=True)
class EpochAddress:
    """Where the first ua-profile NOTIFY of a device's enrolment epoch went (its IP): the one
    address that epoch's URL goes to. Not in any retained message, so it lives here."""

    epoch: int
    address: str


def epoch(iso: str, default: float) -> float:
    """Seconds since the epoch of an ISO 8601 time; ``default`` when it cannot be read."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError, TypeError, OverflowError):
        return default


class Store:
    """``later``, when given, batches writes: the first write is queued and asks ``later`` to call
    :meth:`commit` (the notifier passes "in notifier.main.COMMIT_AFTER"), which runs the queue in
    one transaction, so the messages of that time cost one commit, not three per NOTIFY.
    Without it every write commits at once."""

    def __init__(self, path: Path | str | None = None,
                 later: Callable[[Callable[[], None]], Any] | None = None, clock: Any = None,
                 health: HealthLike | None = None) -> None:
        self.rebuilt: str | None = None
        if path is None:
            self.db = sqlite_utils.Database(memory=True)
        else:
            opened = open_database(path, health)
            self.db, self.rebuilt = opened.db, opened.rebuilt
        self._conn = self.db.conn
        # Batched: not even executed until the commit, so a message that sends a NOTIFY puts it
        # on the wire before any sqlite work (the commit runs at the same time either way).
        self.writes = Writes(self._conn, Path(path).name if path is not None else "notifier store",
                             later, clock, health)
        self._write = self.writes.add
        self._create()
        self.devices: dict[str, Device] = {}
        self.published: dict[str, Published] = {}
        self.provisions: dict[str, Provision] = {}
        self.sent: set[SentKey] = set()
        self.credentials: dict[str, dict[int, ResyncCredentials]] = {}
        self.addressed: dict[str, EpochAddress] = {}
        self._load()

    def _create(self) -> None:
        self.db.table("devices").create(
            {"mac": str, "payload": str, "seen": float, "cseq": int}, pk="mac", if_not_exists=True)
        self.db.table("published").create({"mac": str, "payload": str}, pk="mac", if_not_exists=True)
        self.db.table("provisions").create(
            {"mac": str, "provisioned": int, "revision": int, "at": float}, pk="mac", if_not_exists=True)
        self.db.table("sent").create(
            {"mac": str, "call_id": str, "revision": int, "kind": str, "at": float},
            pk=("mac", "call_id", "revision", "kind"), if_not_exists=True)
        self.db.table("credentials").create(
            {"mac": str, "revision": int, "username": str, "password": str},
            pk=("mac", "revision"), if_not_exists=True)
        # Added with enrolment: a database of an older notifier gets the table here, empty,
        # which is right (no epoch was addressed before the fileserver numbered them).
        self.db.table("addressed").create(
            {"mac": str, "epoch": int, "address": str, "at": float}, pk="mac", if_not_exists=True)

    def _load(self) -> None:
        for row in self.db["devices"].rows:
            try:
                d = Discovered.from_json(row["payload"])
            except ValueError:
                continue
            self.devices[row["mac"]] = Device(d, row["seen"], row["cseq"] or 0)
        for row in self.db["published"].rows:
            try:
                self.published[row["mac"]] = Published.from_json(row["payload"])
            except ValueError:
                continue
        for row in self.db["provisions"].rows:
            self.provisions[row["mac"]] = Provision(bool(row["provisioned"]), row["revision"], row["at"])
        for row in self.db["sent"].rows:
            self.sent.add(SentKey(row["mac"], row["call_id"], row["revision"], row["kind"]))
        for row in self.db["credentials"].rows:
            self.credentials.setdefault(row["mac"], {})[row["revision"]] = ResyncCredentials(
                row["revision"], row["username"], row["password"], row["mac"])
        for row in self.db["addressed"].rows:
            self.addressed[row["mac"]] = EpochAddress(row["epoch"], row["address"])

    # --- writes (hot path: plain statements, no per-call schema introspection) ---
    def put_device(self, mac: str, discovered: Discovered, seen: float, raw: bytes | None = None) -> Device:
        """Store a discovery; ``raw`` is its JSON as received, which spares encoding it again."""
        old = self.devices.get(mac)
        # Our CSeq belongs to one dialog; a new Call-ID is a new dialog and starts again.
        cseq = old.cseq if old is not None and old.discovered.call_id == discovered.call_id else 0
        device = Device(discovered, seen, cseq)
        self.devices[mac] = device
        self._write("INSERT OR REPLACE INTO devices (mac, payload, seen, cseq) VALUES (?, ?, ?, ?)",
                    (mac, (raw or discovered.to_json()).decode("utf-8"), seen, cseq))
        return device

    def drop_device(self, mac: str) -> None:
        if self.devices.pop(mac, None) is not None:
            self._write("DELETE FROM devices WHERE mac = ?", (mac,))

    def next_cseq(self, mac: str) -> int:
        device = self.devices[mac]
        device.cseq += 1
        self._write("UPDATE devices SET cseq = ? WHERE mac = ?", (device.cseq, mac))
        return device.cseq

    def put_published(self, mac: str, published: Published, raw: bytes | None = None) -> Published | None:
        """Store; returns what was published before. ``raw``: its JSON as received."""
        old = self.published.get(mac)
        self.published[mac] = published
        self._write("INSERT OR REPLACE INTO published (mac, payload) VALUES (?, ?)",
                    (mac, (raw or published.to_json()).decode("utf-8")))
        return old

    def drop_published(self, mac: str) -> None:
        if self.published.pop(mac, None) is not None:
            self._write("DELETE FROM published WHERE mac = ?", (mac,))
        # A device removed and added again may start its epochs again from 1.
        if self.addressed.pop(mac, None) is not None:
            self._write("DELETE FROM addressed WHERE mac = ?", (mac,))

    def put_provision(self, mac: str, provision: Provision) -> None:
        self.provisions[mac] = provision
        self._write(
            "INSERT OR REPLACE INTO provisions (mac, provisioned, revision, at) VALUES (?, ?, ?, ?)",
            (mac, int(provision.provisioned), provision.revision, provision.at))

    def mark_sent(self, key: SentKey, at: float) -> bool:
        """Record a NOTIFY about to go out; False when that one was already sent."""
        if key in self.sent:
            return False
        self.sent.add(key)
        self._write(
            "INSERT OR IGNORE INTO sent (mac, call_id, revision, kind, at) VALUES (?, ?, ?, ?, ?)",
            (key.mac, key.call_id, key.revision, key.kind, at))
        return True

    def address_epoch(self, mac: str, epoch: int, address: str, at: float) -> bool:
        """Bind ``epoch``'s URL to ``address`` unless the epoch already has one; True when it
        was bound now. One row per MAC: an older epoch's address is of no further use."""
        old = self.addressed.get(mac)
        if old is not None and old.epoch == epoch:
            return False
        self.addressed[mac] = EpochAddress(epoch, address)
        self._write("INSERT OR REPLACE INTO addressed (mac, epoch, address, at) VALUES (?, ?, ?, ?)",
                    (mac, epoch, address, at))
        return True

    def put_credentials(self, mac: str, credentials: ResyncCredentials) -> None:
        """Keep a revision's credentials, and only the newest :data:`CREDENTIALS_KEPT`."""
        kept = self.credentials.setdefault(mac, {})
        if kept.get(credentials.revision) == credentials:
            return  # the retained replay after a restart
        kept[credentials.revision] = credentials
        self._write("INSERT OR REPLACE INTO credentials (mac, revision, username, password) "
                    "VALUES (?, ?, ?, ?)", (mac, credentials.revision, credentials.username,
                                            credentials.password))
        for old in sorted(kept)[:-CREDENTIALS_KEPT]:
            del kept[old]
            self._write("DELETE FROM credentials WHERE mac = ? AND revision = ?", (mac, old))

    def drop_credentials(self, mac: str) -> None:
        if self.credentials.pop(mac, None) is not None:
            self._write("DELETE FROM credentials WHERE mac = ?", (mac,))

    def credentials_for(self, mac: str, running: int | None) -> ResyncCredentials | None:
        """What the phone most likely checks a challenge against: the credentials of the
        revision it runs; else the newest not newer than that; else the newest known."""
        kept = self.credentials.get(mac)
        if not kept:
            return None
        if running is not None:
            if running in kept:
                return kept[running]
            older = [r for r in kept if r < running]
            if older:
                return kept[max(older)]
        return kept[max(kept)]

    def commit(self) -> bool:
        """Commit what was queued; False when it is kept for a retry."""
        return self.writes.commit()

    def close(self) -> None:
        self.writes.close()  # a commit still scheduled then finds nothing to do
        self.db.close()

    def summary(self) -> dict[str, int]:
        return {"devices": len(self.devices), "published": len(self.published),
                "notifies_recorded": len(self.sent), "credentials": len(self.credentials),
                "epochs_addressed": len(self.addressed)}

