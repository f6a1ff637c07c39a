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

from fileserver.files import DeviceFiles, ServedFile
from services.store import HealthLike, Writes, open_database


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
        if "discovered" not in db.table_names():
            db.table("discovered").create({"mac": str, "ip": str}, pk="mac")
        if "errors" not in db.table_names():
            db.table("errors").create({"mac": str}, pk="mac")

    # --- device files ---
    def load(self) -> list[DeviceFiles]:
        files: dict[str, dict[str, ServedFile]] = {}
        for row in self.db["files"].rows:
            files.setdefault(row["mac"], {})[row["name"]] = ServedFile.make(
                row["name"], row["content_type"], bytes(row["content"]), row["sha256"])
        return [
            DeviceFiles(row["mac"], row["revision"], row["vendor"], row["model"], row["template"],
                        row["notify_path"], files.get(row["mac"], {}))
            for row in self.db["devices"].rows
        ]

    def put(self, device: DeviceFiles) -> None:
        self._write("DELETE FROM files WHERE mac = ?", (device.mac,))
        for f in device.files.values():
            self._write("INSERT INTO files (mac, name, content_type, content, sha256, size) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (device.mac, f.name, f.content_type, f.body, f.sha256, len(f.body)))
        self._write("INSERT OR REPLACE INTO devices (mac, revision, vendor, model, template, notify_path) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (device.mac, device.revision, device.vendor, device.model, device.template,
                     device.notify_path))

    def remove(self, mac: str) -> None:
        for table in ("files", "devices", "fetches"):
            self._write(f"DELETE FROM {table} WHERE mac = ?", (mac,))

    # --- what must outlive a restart ---
    def fetch_states(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {(r["mac"], r["name"]): (r["served"] or "", r["provisioned"] or "")
                for r in self.db["fetches"].rows}

    def set_fetch_state(self, mac: str, name: str, served: str, provisioned: str) -> None:
        self._write("INSERT OR REPLACE INTO fetches (mac, name, served, provisioned) VALUES (?, ?, ?, ?)",
                    (mac, name, served, provisioned))

    def discovered_ips(self) -> dict[str, str]:
        return {r["mac"]: r["ip"] for r in self.db["discovered"].rows}

    def set_discovered_ip(self, mac: str, ip: str | None) -> None:
        if ip is None:
            self._write("DELETE FROM discovered WHERE mac = ?", (mac,))
        else:
            self._write("INSERT OR REPLACE INTO discovered (mac, ip) VALUES (?, ?)", (mac, ip))

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


