"""The fileserver's own database (sqlite-utils): every device's files, so they are served after
a restart even while the broker is away, plus the little state that must outlive a restart."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from fileserver.files import DeviceFiles, ServedFile


class Store:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite_utils.Database(str(path))
        self.db.enable_wal()
        self._ensure()

    def _ensure(self) -> None:
        db = self.db
        if "devices" not in db.table_names():
            db["devices"].create({"mac": str, "revision": int, "vendor": str, "model": str,
                                  "template": str, "notify_path": str}, pk="mac")
        if "files" not in db.table_names():
            db["files"].create({"mac": str, "name": str, "content_type": str, "content": bytes,
                                "sha256": str, "size": int}, pk=("mac", "name"))
        if "fetches" not in db.table_names():
            # per file: the sha256 last served with a 200, and the one the phone came back for
            db["fetches"].create({"mac": str, "name": str, "served": str, "provisioned": str},
                                 pk=("mac", "name"))
        if "discovered" not in db.table_names():
            db["discovered"].create({"mac": str, "ip": str}, pk="mac")
        if "errors" not in db.table_names():
            db["errors"].create({"mac": str}, pk="mac")

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
        with self.db.conn:
            self.db["files"].delete_where("mac = ?", [device.mac])
            self.db["files"].insert_all(
                {"mac": device.mac, "name": f.name, "content_type": f.content_type, "content": f.body,
                 "sha256": f.sha256, "size": len(f.body)} for f in device.files.values())
            self.db["devices"].upsert(
                {"mac": device.mac, "revision": device.revision, "vendor": device.vendor,
                 "model": device.model, "template": device.template,
                 "notify_path": device.notify_path}, pk="mac")

    def remove(self, mac: str) -> None:
        with self.db.conn:
            for table in ("files", "devices", "fetches"):
                self.db[table].delete_where("mac = ?", [mac])

    # --- what must outlive a restart ---
    def fetch_states(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {(r["mac"], r["name"]): (r["served"] or "", r["provisioned"] or "")
                for r in self.db["fetches"].rows}

    def set_fetch_state(self, mac: str, name: str, served: str, provisioned: str) -> None:
        with self.db.conn:
            self.db["fetches"].upsert({"mac": mac, "name": name, "served": served,
                                       "provisioned": provisioned}, pk=("mac", "name"))

    def discovered_ips(self) -> dict[str, str]:
        return {r["mac"]: r["ip"] for r in self.db["discovered"].rows}

    def set_discovered_ip(self, mac: str, ip: str | None) -> None:
        with self.db.conn:
            if ip is None:
                self.db["discovered"].delete_where("mac = ?", [mac])
            else:
                self.db["discovered"].upsert({"mac": mac, "ip": ip}, pk="mac")

    def errored(self) -> set[str]:
        return {r["mac"] for r in self.db["errors"].rows}

    def set_errored(self, mac: str, errored: bool) -> None:
        with self.db.conn:
            if errored:
                self.db["errors"].upsert({"mac": mac}, pk="mac")
            else:
                self.db["errors"].delete_where("mac = ?", [mac])

    def close(self) -> None:
        self.db.close()


