"""Faults of the services' own files (issue 11, items 5-7), against real processes and a real
mosquitto: a corrupt or truncated store is moved aside and rebuilt from the broker; a damaged
``fileserver.secret`` stops the fileserver (exit 2, one line); a full disk degrades the services
and loses nothing; data directories are 0700 and stores and secrets 0600.

The full disk is a small tmpfs mounted inside a mount namespace of the test's own
(``unshare -m``, as root; CI is root): the outer test re-runs this file inside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from services.broker import Mosquitto, free_port
from services.health import Health
from services.store import Writes, open_database
from tests.downloads import download
from tests.support import Probe, start_broker, wait_until

ROOT = Path(__file__).resolve().parent.parent
PNP = [sys.executable, "-m", "tools.cli"]
INSIDE = os.environ.get("PNP_TEST_FAULT_MOUNTNS") == "1"
STORES = ("generator", "fileserver", "notifier")
MACS = [f"000b82f5{i:04x}" for i in range(48)]


def assignment(mac: str, name: str = "Alice") -> dict[str, Any]:
    return {"vendor": "grandstream", "model": "GRP2614",
            "accounts": [{"sip_server": "pbx.example.com", "user_id": mac[-4:], "password": "s3cret",
                          "display_name": name}]}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the kernel's store helpers, with real sqlite errors ----------------------------------------

def full_database(path: Path) -> sqlite3.Connection:
    """A database that can hold no more: sqlite's own SQLITE_FULL, as on a full disk."""
    db = open_database(path).db
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn = db.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    return conn


def test_a_failed_commit_keeps_every_write_and_retries_until_it_succeeds(tmp_path):
    conn = full_database(tmp_path / "s.db")
    clock = task.Clock()
    health = Health()
    writes = Writes(conn, "s.db", later=lambda commit: clock.callLater(0, commit), clock=clock,
                    health=health)
    for k in range(20):
        writes.add("INSERT INTO t (k, v) VALUES (?, ?)", (k, b"x" * 3000))
    clock.advance(0)
    assert health.status == "degraded" and "s.db cannot be written" in health.faults["store"]
    assert "full" in health.faults["store"]
    # more arrive while it fails; the backoff retry takes them, and still fails
    writes.add("INSERT INTO t (k, v) VALUES (?, ?)", (20, b"y"))
    clock.advance(0.5)
    assert writes.failures == 2 and len(writes.queue) == 21
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    # space comes back
    conn.execute("PRAGMA max_page_count = 100000")
    clock.advance(1.0)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 21
    assert writes.queue == [] and health.status == "ok"


def test_every_commit_runs_its_before_hook_first_retries_included(tmp_path):
    """The notifier publishes its held statuses there: a sent record must not reach the disk
    ahead of them, by the scheduled commit or by a retry after a failed one."""
    conn = full_database(tmp_path / "s.db")
    clock = task.Clock()
    writes = Writes(conn, "s.db", later=lambda commit: clock.callLater(0, commit), clock=clock)
    rows_seen: list[int] = []
    writes.before_commit = lambda: rows_seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    writes.add("INSERT INTO t (k, v) VALUES (?, ?)", (1, b"x" * 3000))
    writes.add("INSERT INTO t (k, v) VALUES (?, ?)", (2, b"x" * 3000))
    clock.advance(0)
    assert writes.failures == 1 and rows_seen == [0]
    conn.execute("PRAGMA max_page_count = 100000")
    clock.advance(0.5)  # the retry: the hook first, then the rows
    assert rows_seen == [0, 0]
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_close_commits_what_is_queued(tmp_path):
    db = open_database(tmp_path / "s.db").db
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    writes = Writes(db.conn, "s.db", later=lambda commit: None)
    writes.add("INSERT INTO t (k) VALUES (?)", (1,))
    writes.close()
    db.close()
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT k FROM t").fetchall() == [(1,)]


def _healthy(path: Path) -> None:
    db = open_database(path).db
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    db.conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, os.urandom(2000)) for i in range(200)])
    db.conn.commit()
    db.close()


def _overwrite(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(4096))


DAMAGE = {
    "garbage header": lambda p: _overwrite(p, 0),
    "garbage page": lambda p: _overwrite(p, 3 * 4096),
    "truncated to half": lambda p: os.truncate(p, p.stat().st_size // 2),
    "truncated to 0": lambda p: os.truncate(p, 0),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_store_is_moved_aside_with_its_wal_and_a_fresh_one_made(tmp_path, damage):
    path = tmp_path / "x.db"
    _healthy(path)
    DAMAGE[damage](path)
    (tmp_path / "x.db-wal").write_bytes(b"not a wal")
    health = Health()
    opened = open_database(path, health)
    opened.db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")  # usable
    moved = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert moved[0].startswith("x.db.corrupt-") and moved[0] + "-wal" in moved, moved
    assert (tmp_path / (moved[0] + "-wal")).read_bytes() == b"not a wal"
    assert opened.rebuilt and moved[0] in opened.rebuilt
    assert health.counters["store_rebuilt"] == 1 and health.status == "ok"
    assert moved[0] in health.notices["store_rebuilt"]
    assert mode(path) == 0o600


def test_a_lone_empty_store_is_replaced_without_litter(tmp_path):
    (tmp_path / "x.db").write_bytes(b"")
    health = Health()
    opened = open_database(tmp_path / "x.db", health)
    assert "nothing in it to keep" in opened.rebuilt and health.counters["store_rebuilt"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x.db.")) == []


def test_a_healthy_store_opens_as_it_is(tmp_path):
    path = tmp_path / "x.db"
    _healthy(path)
    health = Health()
    opened = open_database(path, health)
    assert opened.rebuilt is None and not health.counters
    assert opened.db.execute("SELECT count(*) FROM t").fetchone()[0] == 200


# --- real processes -----------------------------------------------------------------------------

class Services:
    """A broker of the test's own and the three services with stores, as processes."""

    def __init__(self, directory: Path, data: Path) -> None:
        self.directory = directory
        self.data = data
        self.broker = start_broker(directory / "broker")
        self.http_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.env = {**os.environ, "PNP_MQTT_URL": self.broker.url, "PNP_DATA_DIR": str(data),
                    "PNP_INSTANCE": "fault", "PNP_STATUS_INTERVAL": "1", "PNP_LOG_FORMAT": "text",
                    "PNP_HTTP_PORT": str(self.http_port), "PNP_PUBLIC_URL": self.base + "/",
                    "PNP_SIP_INTERFACE": "127.0.0.1", "PNP_SIP_PORT": str(free_port()),
                    "PNP_NOTIFY_PORT": "0"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.probe = Probe(self.broker.url, "pnp/#")
        self.runs = 0

    def start(self, names: tuple[str, ...] = STORES) -> None:
        self.runs += 1
        for name in names:
            log = (self.directory / f"{name}-{self.runs}.log").open("wb")
            self.procs[name] = subprocess.Popen([*PNP, name], env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(lambda: all(self.online(n) for n in names), timeout=20)

    def status(self, name: str) -> dict:
        return self.probe.last(f"pnp/services/{name}/fault") or {}

    def online(self, name: str) -> bool:
        # a clean stop leaves "offline": an "online" is this run's
        return self.status(name).get("state") == "online"

    def log(self, name: str) -> str:
        return (self.directory / f"{name}-{self.runs}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def assign(self, macs: list[str], name: str = "Alice") -> None:
        for mac in macs:
            self.probe.publish(f"pnp/devices/{mac}/assignment", assignment(mac, name), retain=True)

    def urls(self, mac: str) -> list[str]:
        published = self.probe.last(f"pnp/devices/{mac}/published") or {}
        return [f["url"] for f in published.get("files", [])]

    def served(self, mac: str) -> dict[str, str]:
        """sha256 of each of the device's files as served now ({} while one is not)."""
        found = {}
        config = self.probe.last(f"pnp/devices/{mac}/config")
        for url in self.urls(mac):
            try:
                # a provisioned phone's files: with its own credentials (tests/downloads.py)
                found[url] = hashlib.sha256(download(url, mac, config)).hexdigest()
            except (urllib.error.URLError, OSError):
                return {}
        return found

    def healthz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health(self, name: str) -> subprocess.CompletedProcess:
        return subprocess.run([*PNP, "health", name, "--timeout", "3"], env=self.env,
                              capture_output=True, text=True, timeout=30, cwd=ROOT)

    def close(self) -> None:
        self.stop()
        self.probe.close()
        self.broker.stop()


@pytest.fixture
def services(tmp_path):
    rig = Services(tmp_path, tmp_path / "data")
    yield rig
    rig.close()


def rows(path: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_corrupt_stores_are_rebuilt_from_the_broker_and_devices_stay_served(services):
    """Item 5: each store damaged a different way while stopped; each service starts, moves it
    aside, says so, refills it, and every device is served the same bytes at the same revision;
    what only the old stores knew (revisions, provisioned phones, errors) comes back too."""
    macs = MACS[:3]
    bad_assignment, bad_config = MACS[3], MACS[4]
    services.start()
    services.assign(macs, "Alice")
    services.probe.publish(f"pnp/devices/{bad_assignment}/assignment", {"accounts": "none"}, retain=True)
    services.probe.publish(f"pnp/devices/{bad_config}/config", {"files": "none"}, retain=True)
    wait_until(lambda: all(services.served(m) for m in macs), timeout=15)
    services.assign(macs, "Bob")  # revision 2: a rebuilt store must not start again at 1
    wait_until(lambda: all((services.probe.last(f"pnp/devices/{m}/config") or {}).get("revision") == 2
                           for m in macs), timeout=15)
    wait_until(lambda: all(services.served(m) for m in macs)
               and all(len(services.urls(m)) for m in macs), timeout=15)
    before = {m: services.served(m) for m in macs}  # fetched twice by now: provisioned
    wait_until(lambda: services.status("fileserver").get("counters", {}).get("provisioned") == 3)
    wait_until(lambda: rows(services.data / "notifier.db", "SELECT count(*) FROM published") == 3)
    errors = {m: (services.probe.last(f"pnp/devices/{m}/error") or {}).get("service")
              for m in (bad_assignment, bad_config)}
    assert errors == {bad_assignment: "generator", bad_config: "fileserver"}
    services.stop()

    data = services.data
    _overwrite(data / "generator.db", 0)                                          # not a database
    os.truncate(data / "fileserver.db", (data / "fileserver.db").stat().st_size // 2)  # truncated
    _overwrite(data / "notifier.db", 2 * 4096)                                    # a bad page
    services.assign([bad_assignment])  # put right while the generator is away
    services.start()
    for name in STORES:
        wait_until(lambda: services.status(name).get("counters", {}).get("store_rebuilt") == 1,
                   timeout=10)
        status = services.status(name)
        assert status["health"] == "ok", status
        assert f"{name}.db.corrupt-" in status["notices"]["store_rebuilt"]
        moved = [p for p in data.glob(f"{name}.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
        assert len(moved) == 1 and moved[0].stat().st_size > 0
        assert "could not be used" in services.log(name)
    # still provisioned, before any new download
    wait_until(lambda: services.status("fileserver").get("counters", {}).get("provisioned") == 3)
    wait_until(lambda: all(services.served(m) == before[m] for m in macs), timeout=15)
    for mac in macs:
        assert services.probe.last(f"pnp/devices/{mac}/config")["revision"] == 2
    # the stores hold them again (and the device put right meanwhile)
    wait_until(lambda: rows(data / "fileserver.db", "SELECT count(*) FROM devices") == 4)
    wait_until(lambda: rows(data / "generator.db", "SELECT count(*) FROM renders WHERE revision = 2") == 3)
    wait_until(lambda: rows(data / "notifier.db", "SELECT count(*) FROM published") == 4)
    # the errors the old stores knew of are cleared once resolved
    services.probe.publish(f"pnp/devices/{bad_config}/config", b"", retain=True)
    for mac in (bad_assignment, bad_config):
        wait_until(lambda: services.probe.on(f"pnp/devices/{mac}/error")[-1] == b"", timeout=10)
    # and `pnp devices` lists them all
    listed = subprocess.run([*PNP, "devices", "--json"], env=services.env, capture_output=True,
                            text=True, timeout=30, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    assert {d["mac"] for d in json.loads(listed.stdout)} >= set(macs)


def run_fileserver_once(services: Services) -> subprocess.CompletedProcess:
    return subprocess.run([*PNP, "fileserver"], env=services.env, capture_output=True, text=True,
                          timeout=20, cwd=ROOT)


@pytest.mark.parametrize("damage", ["binary", "short", "a directory"])
def test_a_damaged_secret_stops_the_fileserver_with_one_line_naming_it(services, damage):
    secret = services.data / "fileserver.secret"
    services.data.mkdir(mode=0o700)
    if damage == "binary":
        secret.write_bytes(os.urandom(64))
    elif damage == "short":
        secret.write_text("abc\n")
    else:
        secret.mkdir()
    before = secret.read_bytes() if secret.is_file() else None
    result = run_fileserver_once(services)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(secret) in lines[0], result.stderr
    assert "restore it" in lines[0]
    # never replaced
    assert (secret.read_bytes() if secret.is_file() else None) == before
    assert not (services.data / "fileserver.db").exists()


def test_modes_of_data_directory_stores_and_secret(services):
    """Item 7: made owner-only, and tightened at the next start when found looser."""
    services.start()
    services.assign(MACS[:1])
    wait_until(lambda: services.served(MACS[0]), timeout=15)
    data = services.data
    files = [data / "fileserver.secret"] + [data / f"{n}.db{s}" for n in STORES for s in ("", "-wal", "-shm")]

    def modes() -> dict[str, int]:
        return {p.name: mode(p) for p in [data, *files] if p.exists()}

    expected = {p.name: 0o600 for p in files} | {data.name: 0o700}
    assert modes() == expected
    services.stop()
    os.chmod(data, 0o755)
    for path in data.iterdir():
        os.chmod(path, 0o644)
    services.start()
    assert {k: v for k, v in modes().items() if k in ("data", "fileserver.secret") or k.endswith(".db")} == \
        {k: v for k, v in expected.items() if k in ("data", "fileserver.secret") or k.endswith(".db")}
    wait_until(lambda: modes() == expected, timeout=5)
    assert services.served(MACS[0])


def test_the_fileserver_is_degraded_while_the_broker_is_away(services):
    services.start(("fileserver",))
    assert services.healthz()[0] == 200
    port = services.broker.port
    services.broker.stop()
    # still serving, and healthy within the grace period (a broker restart is no fault)
    status, health = services.healthz()
    assert (status, health["status"], health["mqtt_connected"]) == (200, "ok", False)
    status, health = wait_until(lambda: (lambda h: h if h[0] == 503 else None)(services.healthz()),
                                timeout=25)
    assert health["status"] == "degraded" and "unreachable" in health["reasons"]["mqtt"]
    services.broker = Mosquitto(services.directory / "broker2", port=port, persistence=False).start()
    wait_until(lambda: services.healthz()[0] == 200, timeout=25)
    probe = Probe(services.broker.url, "pnp/#")
    try:
        wait_until(lambda: (probe.last("pnp/services/fileserver/fault") or {}).get("health") == "ok",
                   timeout=10)
    finally:
        probe.close()
    check = subprocess.run([*PNP, "health", "fileserver", "--healthz", "--timeout", "2"],
                           env=services.env, capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert check.returncode == 0, check.stderr


# --- the full disk, in a mount namespace ----------------------------------------------------------

def test_full_disk_in_a_mount_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs (CI has them)")
    check = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {check.stderr.decode().strip()}")
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-m", "pytest", "-q", "-x",
         "-p", "no:cacheprovider", str(Path(__file__)), "-k", "inside"],
        cwd=ROOT, env={**os.environ, "PNP_TEST_FAULT_MOUNTNS": "1"}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = directory / "filler"
    # unbuffered: a buffered file keeps what a short write left over and raises ENOSPC again
    # when it is closed, depending on how the free space falls in 64 KiB steps
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@inside
def test_inside_full_disk_degrades_then_loses_nothing(tmp_path):
    """Item 6: 48 devices assigned while PNP_DATA_DIR is full: degraded with the reason on the
    status topics and /healthz (503), devices still served from memory; once space returns every
    one of them is in every store and served."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(data)], check=True)
    rig = Services(tmp_path, data)
    try:
        rig.start()
        filler = fill(data)
        rig.assign(MACS)
        for name in ("generator", "fileserver"):
            wait_until(lambda: rig.status(name).get("health") == "degraded", timeout=15)
            assert "cannot be written" in rig.status(name)["reasons"]["store"]
        status, health = rig.healthz()
        assert status == 503 and "cannot be written" in health["reasons"]["store"]
        check = rig.health("generator")
        assert check.returncode == 1 and "degraded" in check.stderr, check.stderr
        assert "cannot be written" in rig.log("generator")
        # served meanwhile, from memory
        wait_until(lambda: all(rig.served(m) for m in MACS), timeout=20)
        filler.unlink()
        for name in STORES:
            wait_until(lambda: rig.status(name).get("health") == "ok", timeout=25)
        assert rig.healthz()[0] == 200
        check = rig.health("generator")
        assert check.returncode == 0, check.stderr
        rig.stop()
        # on disk, after a clean stop: all 48 in every store
        assert rows(data / "generator.db", "SELECT count(*) FROM assignments") == 48
        assert rows(data / "generator.db", "SELECT count(*) FROM renders WHERE revision = 1") == 48
        assert rows(data / "fileserver.db", "SELECT count(*) FROM devices") == 48
        assert rows(data / "notifier.db", "SELECT count(*) FROM published") == 48
        # and after a restart every device is still served, with no store rebuilt
        rig.start()
        wait_until(lambda: all(rig.served(m) for m in MACS), timeout=20)
        assert all(rig.status(n).get("counters", {}).get("store_rebuilt", 0) == 0 for n in STORES)
    finally:
        rig.close()
        subprocess.run(["umount", str(data)])
