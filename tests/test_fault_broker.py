"""Faults of the broker that `pnp up` runs (issue 11, items 1-3), against real processes.

Each outer test re-runs one inner test of this file under ``unshare -n`` (NETWORK-SAFETY.md rule
3): `pnp up` there starts its own mosquitto on 1883, phones are simulated at 5060 on their own
loopback addresses, and nothing can leave the host. Run as root, like CI and the README's
``./scripts/up`` on a fresh machine: a broker that dropped to user ``mosquitto`` could not write
its persistence there, which is what item 1 is about.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.broker import answers
from tests.downloads import download
from tests.support import Probe, loopback_multicast, rerun_in_network_namespace, wait_until
from tests.test_system import finished, provisioned_macs
from tests.test_up import alive, children_of

FLAG = "PNP_TEST_FAULT_BROKER_NETNS"
INSIDE = os.environ.get(FLAG) == "1"
SERVICES = ("listener", "generator", "fileserver", "notifier")
MIX = "GRP2614,T46S,D785,X4U"
URL = "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize("inner", ["restart_keeps", "stderr_flood", "kill_9"])
def test_fault_broker_in_a_network_namespace(inner):
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, f"inside_{inner}", FLAG)


# --- inside the namespace ----------------------------------------------------------------------

inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


class Up:
    """`pnp up` with its own broker on a data directory that outlives one run of it."""

    def __init__(self, directory: Path) -> None:
        loopback_multicast()
        self.directory = directory
        common = {"PNP_DATA_DIR": str(directory), "PNP_INSTANCE": "fault",
                  "PNP_STATUS_INTERVAL": "1", "PNP_LOG_FORMAT": "json"}
        # No PNP_BROKER_PORT: `pnp up` takes 1883 when it is free, again after a restart (the
        # stopped broker's closed connections in TIME_WAIT must not make it look taken).
        self.up_env = {**os.environ, **common}
        self.up_env.pop("PNP_MQTT_URL", None)
        self.up_env.pop("PNP_BROKER_PORT", None)
        self.env = {**os.environ, **common, "PNP_MQTT_URL": URL}
        self.runs = 0
        self.proc: subprocess.Popen | None = None
        self.probe: Probe | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / f"up-{self.runs}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        self.runs += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "up"],
                                         env=self.up_env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: answers("127.0.0.1", 1883) or self.proc.poll() is not None, timeout=20)
        assert self.proc.poll() is None, self.log()
        self.probe = Probe(URL, "pnp/#")
        wait_until(self.all_online, timeout=30)

    def all_online(self) -> bool:
        return all((self.probe.last(f"pnp/services/{name}/fault") or {}).get("state") == "online"
                   for name in SERVICES)

    def stop(self) -> None:
        self.probe.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        assert self.proc.returncode == 0, self.log()[-3000:]

    def broker_pid(self) -> int | None:
        for pid in children_of(self.proc.pid):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"mosquitto") and alive(pid):
                return pid
        return None

    def simulate(self, count: int, mac_start: int, address_start: str) -> set[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "simulate", "--json", "--quiet",
             "--sip-port", "5060", "--count", str(count), "--models", MIX, "--assign",
             "--address-start", address_start, "--mac-start", str(mac_start)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        macs = provisioned_macs(finished(proc, timeout=90))
        assert len(macs) == count
        return macs

    def listed(self) -> set[str]:
        done = subprocess.run([sys.executable, "-m", "tools.cli", "devices", "--json"],
                              env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return {d["mac"] for d in json.loads(done.stdout)}

    def served(self, mac: str) -> dict[str, str]:
        """sha256 of every file the device's published URLs serve now, by URL."""
        published = self.probe.last(f"pnp/devices/{mac}/published") or {}
        config = self.probe.last(f"pnp/devices/{mac}/config")
        digests = {}
        for f in published.get("files", []):
            # a provisioned phone's files: with its own credentials (tests/downloads.py)
            digests[f["url"]] = hashlib.sha256(download(f["url"], mac, config)).hexdigest()
        return digests

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        if self.proc is not None and self.proc.poll() is None:
            left = children_of(self.proc.pid)  # before they are orphaned and lose their parent
            self.proc.kill()
            self.proc.wait()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def up(tmp_path):
    system = Up(tmp_path)
    yield system
    system.close()


def still_served(up: Up, before: dict[str, dict[str, str]]) -> None:
    """Every device is listed by `pnp devices` and its URLs serve what they served before."""
    wait_until(lambda: set(before) <= up.listed(), timeout=20)

    def same() -> bool:
        try:
            return all(up.served(mac) == digests for mac, digests in before.items())
        except OSError:
            return False

    wait_until(same, timeout=20, interval=0.2)


@inside
def test_inside_restart_keeps_every_assignment(up):
    """Item 1: `pnp up` as root, stopped and started again on the same data dir."""
    up.start()
    macs = up.simulate(6, 0x1000, "127.0.1.2")
    before = {mac: up.served(mac) for mac in macs}
    assert all(before.values())
    up.stop()

    broker_dir = up.directory / "broker"
    db = (broker_dir / "mosquitto.db").stat()
    assert db.st_size > 0
    # retained configs hold SIP passwords: the broker's files are the owner's alone
    assert stat.S_IMODE(broker_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.st_mode) == 0o600
    assert stat.S_IMODE((broker_dir / "mosquitto.conf").stat().st_mode) == 0o600
    assert "Permission denied" not in up.log()

    up.start()
    # Retained by the broker itself: its database was read back.
    wait_until(lambda: all(up.probe.last(f"pnp/devices/{m}/assignment") for m in macs), timeout=10)
    still_served(up, before)
    # and new phones still get provisioned
    up.simulate(2, 0x1100, "127.0.2.2")
    up.stop()


@inside
def test_inside_stderr_flood_does_not_hang(up):
    """Item 2: a broker logging far more than a pipe holds (64 KiB) keeps serving."""
    conf_d = up.directory / "broker" / "conf.d"
    conf_d.mkdir(parents=True)
    (conf_d / "verbose.conf").write_text("log_type all\n")
    up.start()
    # Every message is a few lines of the broker's debug log: megabytes in all.
    for i in range(4000):
        up.probe.client.publish(f"pnp/flood/{i % 10}", b"x" * 50, qos=1)
    up.probe.publish("pnp/flood/last", b"done")
    wait_until(lambda: up.probe.on("pnp/flood/last"), timeout=30)

    up.simulate(3, 0x2000, "127.0.3.2")
    broker_lines = [line for line in up.log().splitlines() if line.startswith("broker ")]
    assert sum(len(line) for line in broker_lines) > 1_000_000
    assert any("Received PUBLISH" in line and "pnp/flood/last" in line for line in broker_lines)
    up.stop()


@inside
def test_inside_kill_9_of_the_broker(up):
    """Item 3: the broker killed under `pnp up` is logged, restarted with its persistence, and
    the system carries on."""
    up.start()
    macs = up.simulate(4, 0x3000, "127.0.4.2")
    before = {mac: up.served(mac) for mac in macs}
    # Past the broker's next autosave, so the kill falls outside the window it may lose
    # (docs/DEPLOY.md, "What can be lost, and when").
    settled = time.time()
    db = up.directory / "broker" / "mosquitto.db"
    wait_until(lambda: db.exists() and db.stat().st_mtime > settled, timeout=15, interval=0.1)

    old = up.broker_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: "broker exited with signal 9" in up.log(), timeout=10)
    wait_until(lambda: up.broker_pid() not in (None, old), timeout=10)
    assert alive(up.proc.pid)

    still_served(up, before)
    up.simulate(2, 0x3100, "127.0.5.2")
    up.stop()
    assert not [pid for pid in children_of(up.proc.pid) if alive(pid)]


def test_a_test_broker_that_logs_a_lot_keeps_serving(tmp_path):
    """Item 2 for the tests' own brokers (tests/support.py): their stderr is read too."""
    from services.broker import Mosquitto

    broker = Mosquitto(tmp_path / "broker", persistence=False, extra_config="log_type all").start()
    probe = Probe(broker.url, "flood/#")
    try:
        # Each message is a few debug lines of ~100 bytes: well past a 64 KiB pipe.
        for i in range(3000):
            probe.client.publish(f"flood/{i % 10}", b"x" * 50, qos=1)
        probe.publish("flood/last", b"done")
        wait_until(lambda: probe.on("flood/last"), timeout=30)
        assert broker.process.poll() is None
        assert any("flood/last" in line for line in broker.output)
    finally:
        probe.close()
        broker.stop()
