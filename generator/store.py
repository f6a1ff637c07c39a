"""The generator's own sqlite database: devices, assignments, profiles, and what it rendered.

The broker's retained messages are the truth the generator rebuilds from; the database keeps what
the broker does not: each device's revision and digest (so a restart does not bump revisions)
and the history of every change of bytes. WAL journal, ``synchronous=NORMAL``; writes are
queued until :meth:`commit`, and a commit that fails (disk full) keeps them and retries
(services/store.py). A store that cannot be opened is moved aside and a fresh one made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import Any

from services.messages import now_iso
from services.store import HealthLike, Writes, open_database


@dataclass
class Credential:
    """A device's HTTP password for our config server, and the last command of each kind acted on."""

    password: str
    previous: str | None = None  # accepted until the phone has the file with the new one
    rearm: str = ""  # id of the last rearm command acted on
    rotate: str = ""  # id of the last rotate command acted on


@dataclass
class RenderRecord:
    revision: int = 0
    digest: str = ""
    errored: bool = False


class Store:
    def __init__(self, path: Path | str, clock: Any = None, health: HealthLike | None = None) -> None:
        opened = open_database(path, health)
        self.db = opened.db
        self.rebuilt = opened.rebuilt
        self._create()
        self.conn = self.db.conn
        # committed when the service says so (once per burst); ``clock`` times the retries
        self.writes = Writes(self.conn, Path(path).name, lambda commit: None, clock, health)
        self._write = self.writes.add

    def _create(self) -> None:
        if "devices" not in self.db.table_names():
            self.db.table("devices").create({"mac": str, "vendor": str, "model": str, "firmware": str,
                                       "updated_at": str}, pk="mac")
        if "assignments" not in self.db.table_names():
            self.db.table("assignments").create({"mac": str, "payload": str, "updated_at": str}, pk="mac")
        if "profiles" not in self.db.table_names():
            self.db.table("profiles").create({"name": str, "payload": str, "updated_at": str}, pk="name")
        if "renders" not in self.db.table_names():
            self.db.table("renders").create({"mac": str, "revision": int, "digest": str, "template": str,
                                       "vendor": str, "model": str, "errored": int, "updated_at": str},
                                      pk="mac")
        if "credentials" not in self.db.table_names():
            self.db.table("credentials").create({"mac": str, "password": str, "previous": str, "rearm": str,
                                                 "rotate": str, "updated_at": str}, pk="mac")
        if "history" not in self.db.table_names():
            self.db.table("history").create({"id": int, "mac": str, "revision": int, "digest": str,
                                       "template": str, "at": str}, pk="id")
            self.db.table("history").create_index(["mac", "revision"])

    # --- inputs, as they arrived ---
    def put_device(self, mac: str, vendor: str, model: str, firmware: str) -> None:
        self._write("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?)",
                    (mac, vendor, model, firmware, now_iso()))

    def put_assignment(self, mac: str, payload: str | None) -> None:
        if payload is None:
            self._write("DELETE FROM assignments WHERE mac = ?", (mac,))
        else:
            self._write("INSERT OR REPLACE INTO assignments VALUES (?, ?, ?)", (mac, payload, now_iso()))

    def assignments(self) -> dict[str, str]:
        """The last assignment received per MAC, as received (read at start: the broker may
        have lost some of them)."""
        return {mac: payload for mac, payload in self.conn.execute("SELECT mac, payload FROM assignments")}

    def put_profile(self, name: str, payload: str | None) -> None:
        if payload is None:
            self._write("DELETE FROM profiles WHERE name = ?", (name,))
        else:
            self._write("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)", (name, payload, now_iso()))

    # --- each device's HTTP credential (the database is 0600: services/store.py) ---
    def credentials(self) -> dict[str, Credential]:
        rows = self.conn.execute("SELECT mac, password, previous, rearm, rotate FROM credentials")
        return {mac: Credential(password, previous, rearm or "", rotate or "")
                for mac, password, previous, rearm, rotate in rows}

    def put_credential(self, mac: str, credential: Credential) -> None:
        self._write("INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, ?, ?, ?)",
                    (mac, credential.password, credential.previous, credential.rearm, credential.rotate,
                     now_iso()))

    # --- what was rendered ---
    def renders(self) -> dict[str, RenderRecord]:
        rows = self.conn.execute("SELECT mac, revision, digest, errored FROM renders")
        return {mac: RenderRecord(revision, digest, bool(errored)) for mac, revision, digest, errored in rows}

    def save_render(self, mac: str, revision: int, digest: str, template: str, vendor: str, model: str,
                    errored: bool) -> None:
        at = now_iso()
        self._write("INSERT OR REPLACE INTO renders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (mac, revision, digest, template, vendor, model, int(errored), at))
        if digest:
            self._write("INSERT INTO history (mac, revision, digest, template, at) VALUES (?, ?, ?, ?, ?)",
                        (mac, revision, digest, template, at))

    def set_errored(self, mac: str, errored: bool) -> None:
        self._write("INSERT INTO renders VALUES (?, 0, '', '', '', '', ?, ?) "
                    "ON CONFLICT (mac) DO UPDATE SET errored = excluded.errored",
                    (mac, int(errored), now_iso()))

    def forget_digest(self, mac: str) -> None:
        self._write("UPDATE renders SET digest = '' WHERE mac = ?", (mac,))

    def history(self, mac: str) -> list[dict]:
        self.writes.commit()  # what was queued is part of the history asked for
        return list(self.db.query("SELECT revision, digest, template, at FROM history WHERE mac = ? "
                                  "ORDER BY id", [mac]))

    def commit(self) -> bool:
        """Commit what was queued; False when it is kept for a retry."""
        return self.writes.commit()

    def close(self) -> None:
        self.writes.close()
        self.conn.close()
