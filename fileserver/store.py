"""The fileserver's own database (sqlite-utils): every device's files, so they are served after
a restart even while the broker is away, plus the little state that must outlive a restart.

Writes are plain SQL queued and committed together once per reactor turn when a ``clock`` is
given: in a boot storm a commit per download (each a WAL sync) was half the fileserver's time,
and sqlite-utils' upsert re-reads the table's schema on every call. Reads happen at startup only,
after which the in-memory catalog and tracker are the truth and the database follows them.
A commit that fails (disk full) keeps its writes and retries (services/store.py); a store that
cannot be opened is moved aside and refilled from the retained configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fileserver.enrolment import Key, Record
from fileserver.files import DeviceFiles, ServedFile
from services.store import HealthLike, Writes, open_database

# added after the first release: an older store gets them, empty, when it is opened
_DEVICE_COLUMNS = ("auth_password", "auth_previous", "enrol_assignment", "enrol_rearm")


class Store:
    def __init__(self, path: Path | str, clock: Any = None, health: HealthLike | None = None) -> None:
        # WAL with NORMAL: a commit survives the process dying; only a power cut can lose the
        # last ones, and the broker's retained configs bring those back.
        opened = open_database(path, health)
        self.db = opened.db
        self.rebuilt = opened.rebuilt
        self._ensure()
        self.clock = clock
        later = None if clock is None else (lambda commit: clock.callLater(0, commit))
        self.writes = Writes(self.db.conn, Path(path).name, later, clock, health)

    def _ensure(self) -> None:
        db = self.db
        if "devices" not in db.table_names():
            db.table("devices").create({"mac": str, "revision": int, "vendor": str, "model": str,
                                  "template": str, "notify_path": str}, pk="mac")
        if "files" not in db.table_names():
            db.table("files").create({"mac": str, "name": str, "content_type": str, "content": bytes,
                                "sha256": str, "size": int}, pk=("mac", "name"))
        if "fetches" not in db.table_names():
            # per file: the sha256 last served with a 200, and the one the phone came back for
            db.table("fetches").create({"mac": str, "name": str, "served": str, "provisioned": str},
                                 pk=("mac", "name"))
        if "retired" not in db.table_names():
            # per device: sha256 of the pre-rotation HTTP password its phone moved past
            db.table("retired").create({"mac": str, "digest": str}, pk="mac")
        if "errors" not in db.table_names():
            db.table("errors").create({"mac": str}, pk="mac")
        devices = db.table("devices")
        columns = devices.columns_dict
        for name in _DEVICE_COLUMNS:
            if name not in columns:
                devices.add_column(name, str)
        if "enrolment" not in db.table_names():
            db.table("enrolment").create({
                "mac": str, "epoch": int, "state": str, "since": float, "until": float, "at": float,
                "candidate": str, "bound": str, "addresses": str, "reason": str,
                "assignment": str, "rearm": str, "adopted": int}, pk="mac")

    # --- device files ---
    def load(self) -> list[DeviceFiles]:
        files: dict[str, dict[str, ServedFile]] = {}
        for row in self.db["files"].rows:
            files.setdefault(row["mac"], {})[row["name"]] = ServedFile.make(
                row["name"], row["content_type"], bytes(row["content"]), row["sha256"])
        return [
            DeviceFiles(row["mac"], row["revision"], row["vendor"], row["model"], row["template"],
                        row["notify_path"], files.get(row["mac"], {}), row["auth_password"],
                        row["auth_previous"],
                        None if row["enrol_assignment"] is None
                        else Key(row["enrol_assignment"], row["enrol_rearm"] or ""))
            for row in self.db["devices"].rows
        ]

    def put(self, device: DeviceFiles) -> None:
        self._write("DELETE FROM files WHERE mac = ?", (device.mac,))
        for f in device.files.values():
            self._write("INSERT INTO files (mac, name, content_type, content, sha256, size) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (device.mac, f.name, f.content_type, f.body, f.sha256, len(f.body)))
        enrol = device.enrol
        self._write("INSERT OR REPLACE INTO devices (mac, revision, vendor, model, template, "
                    "notify_path, auth_password, auth_previous, enrol_assignment, enrol_rearm) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device.mac, device.revision, device.vendor, device.model, device.template,
                     device.notify_path, device.password, device.previous,
                     None if enrol is None else enrol.assignment,
                     None if enrol is None else enrol.rearm))

    def remove(self, mac: str) -> None:
        for table in ("files", "devices", "fetches", "enrolment", "retired"):
            self._write(f"DELETE FROM {table} WHERE mac = ?", (mac,))

    # --- enrolment ---
    def enrolments(self) -> dict[str, Record]:
        out = {}
        for r in self.db["enrolment"].rows:
            key = None if r["assignment"] is None else Key(r["assignment"], r["rearm"] or "")
            addresses = tuple(a for a in (r["addresses"] or "").split(",") if a)
            out[r["mac"]] = Record(r["mac"], r["epoch"], r["state"], r["since"], r["until"], r["at"],
                                   r["candidate"], r["bound"], addresses, r["reason"] or "", key,
                                   bool(r["adopted"]))
        return out

    def set_enrolment(self, mac: str, record: Record | None) -> None:
        if record is None:
            self._write("DELETE FROM enrolment WHERE mac = ?", (mac,))
            return
        key = record.key
        self._write("INSERT OR REPLACE INTO enrolment (mac, epoch, state, since, until, at, "
                    "candidate, bound, addresses, reason, assignment, rearm, adopted) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (mac, record.epoch, record.state, record.since, record.until, record.at,
                     record.candidate, record.bound, ",".join(record.addresses), record.reason,
                     None if key is None else key.assignment, None if key is None else key.rearm,
                     int(record.adopted)))

    # --- what must outlive a restart ---
    def fetch_states(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {(r["mac"], r["name"]): (r["served"] or "", r["provisioned"] or "")
                for r in self.db["fetches"].rows}

    def set_fetch_state(self, mac: str, name: str, served: str, provisioned: str) -> None:
        self._write("INSERT OR REPLACE INTO fetches (mac, name, served, provisioned) VALUES (?, ?, ?, ?)",
                    (mac, name, served, provisioned))

    def retired(self) -> dict[str, str]:
        return {r["mac"]: r["digest"] for r in self.db["retired"].rows}

    def set_retired(self, mac: str, digest: str) -> None:
        self._write("INSERT OR REPLACE INTO retired (mac, digest) VALUES (?, ?)", (mac, digest))

    def errored(self) -> set[str]:
        return {r["mac"] for r in self.db["errors"].rows}

    def set_errored(self, mac: str, errored: bool) -> None:
        if errored:
            self._write("INSERT OR REPLACE INTO errors (mac) VALUES (?)", (mac,))
        else:
            self._write("DELETE FROM errors WHERE mac = ?", (mac,))

    # --- writing ---
    def _write(self, sql: str, params: Any) -> None:
        self.writes.add(sql, params)

    def flush(self) -> bool:
        """Commit every queued write in one transaction; False when they are kept for a retry."""
        return self.writes.commit()

    def close(self) -> None:
        self.writes.close()
        self.db.close()


