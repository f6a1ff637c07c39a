"""The whole system, as an operator runs it: `pnp up`, `pnp assign`, `pnp simulate`.

Under ``unshare -n`` (NETWORK-SAFETY.md rule 3): the outer test re-runs this file inside a network
namespace of its own, where only ``lo`` exists, so the real SIP port 5060 and the multicast group
are ours and nothing can leave the host. The broker is started by the test (not by `pnp up`) so
that the test can restart it mid-storm.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.broker import Mosquitto
from tests.support import Probe, rerun_in_network_namespace, wait_until
from tests.test_up import service_pids
from tools.simulate.fleet import plan

INSIDE = os.environ.get("PNP_TEST_SYSTEM_NETNS") == "1"
SERVICES = ("listener", "generator", "fileserver", "notifier")
MIX = "GRP2614,T46S,D785,X4U,GRP2615,T54W"
GROUP = ("224.0.1.75", 5060)


def test_whole_system_in_a_network_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, "inside", "PNP_TEST_SYSTEM_NETNS", timeout=400)


# --- inside the namespace ----------------------------------------------------------------------

inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


class System:
    """A broker of the test's own, `pnp up` against it, and helpers to drive both."""

    def __init__(self, directory: Path) -> None:
        for command in ("ip link set lo up", "ip link set lo multicast on",
                        "ip route replace 224.0.0.0/4 dev lo"):
            subprocess.run(command.split(), check=True)
        self.directory = directory
        self.broker = Mosquitto(directory / "broker", port=1883, persistence=True).start()
        self.env = {**os.environ, "PNP_MQTT_URL": self.broker.url, "PNP_DATA_DIR": str(directory),
                    "PNP_INSTANCE": "system", "PNP_STATUS_INTERVAL": "1", "PNP_LOG_FORMAT": "json"}
        self.log = open(directory / "up.log", "wb")
        self.up = subprocess.Popen([sys.executable, "-m", "tools.cli", "up"], env=self.env,
                                   stdout=self.log, stderr=subprocess.STDOUT)
        self.probe = Probe(self.broker.url, "pnp/#")
        wait_until(self.all_online, timeout=30)

    def all_online(self) -> bool:
        return all((self.probe.last(f"pnp/services/{name}/system") or {}).get("state") == "online"
                   for name in SERVICES)

    def simulate(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "simulate", "--json", "--quiet",
             "--sip-port", "5060", *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def assign(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.cli", "assign", *args],
                              env=self.env, capture_output=True, text=True, timeout=60)

    def kill_service(self, name: str) -> int:
        pid = service_pids(self.up.pid)[name]
        os.kill(pid, signal.SIGKILL)
        return pid

    def close(self) -> None:
        self.probe.close()
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(15)
            except subprocess.TimeoutExpired:
                self.up.kill()
        self.broker.stop()
        self.log.close()


@pytest.fixture
def system(tmp_path):
    s = System(tmp_path)
    yield s
    s.close()


def finished(proc: subprocess.Popen, timeout: float = 150) -> dict:
    out, err = proc.communicate(timeout=timeout)
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"simulate printed no report (exit {proc.returncode}): {err[-3000:]}")
    failures = report.get("failures") or []
    assert proc.returncode == 0 and not failures, json.dumps(failures, indent=1)[:4000]
    return report


def provisioned_macs(report: dict) -> set[str]:
    return {p["mac"] for p in report["phones"] if p["state"] == "provisioned"}


def story_of(system: System, mac: str) -> dict:
    return {kind: system.probe.last(f"pnp/devices/{mac}/{kind}")
            for kind in ("discovered", "assignment", "config", "published", "notify", "fetched", "error")}


def garbage_at_the_group(stop: threading.Event) -> int:
    """Hostile datagrams at the multicast group from a phone-like address until told to stop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.bind(("127.0.250.1", 0))
    junk = [b"\x00" * 1400, b"SUBSCRIBE sip:x SIP/2.0\r\n" + b"Via: x\r\n" * 300,
            b"NOTIFY sip:a@b SIP/2.0\r\nContent-Length: 99999\r\n\r\n", os.urandom(900),
            b"SIP/2.0 200 OK\r\n\r\n"]
    sent = 0
    while not stop.is_set() and sent < 20000:
        sock.sendto(junk[sent % len(junk)], GROUP)
        sent += 1
        time.sleep(0.002)
    sock.close()
    return sent


@inside
def test_inside_mixed_fleet_with_hostile_input_and_a_late_assignment(system):
    # A bad assignment: answered on …/error, nothing else disturbed.
    bad_mac = "000b82ffff01"
    system.probe.publish(f"pnp/devices/{bad_mac}/assignment",
                         {"accounts": [{"sip_server": "pbx.example.com", "user_id": 1001}]}, retain=True)
    wait_until(lambda: system.probe.last(f"pnp/devices/{bad_mac}/error"), timeout=10)
    assert "user_id" in system.probe.last(f"pnp/devices/{bad_mac}/error")["message"]

    stop = threading.Event()
    noise = threading.Thread(target=garbage_at_the_group, args=(stop,), daemon=True)
    noise.start()
    try:
        # Phones that boot before anyone assigned them: their assignment arrives late.
        late = plan(3, ["GRP2614", "T46S", "D785"], "127.0.3.2", 3000, None)
        waiting = system.simulate("--count", "3", "--models", "GRP2614,T46S,D785",
                                  "--address-start", "127.0.3.2", "--mac-start", "3000")
        # A pre-staged mixed fleet at the same time.
        fleet = system.simulate("--count", "24", "--models", MIX, "--assign",
                                "--address-start", "127.0.1.2", "--mac-start", "1000")
        wait_until(lambda: all(system.probe.last(f"pnp/devices/{i.mac}/discovered") for i in late),
                   timeout=20)
        for ident in late:
            done = system.assign("--mac", ident.mac, "--sip-server", "pbx.example.com",
                                 "--user-id", str(2000 + int(ident.mac[-3:], 16)),
                                 "--password", "late-secret")
            assert done.returncode == 0, done.stdout + done.stderr
        late_report = finished(waiting)
        fleet_report = finished(fleet)
    finally:
        stop.set()
        noise.join()

    assert provisioned_macs(late_report) == {i.mac for i in late}
    assert len(provisioned_macs(fleet_report)) == 24
    # The retained topics tell the same story as the phones.
    for mac in provisioned_macs(fleet_report) | provisioned_macs(late_report):
        story = story_of(system, mac)
        assert story["discovered"]["mac"] == mac
        assert story["notify"]["status"] == "accepted"
        assert story["fetched"]["provisioned"] is True
        assert story["fetched"]["sha256"] == story["config"]["files"][0]["sha256"] or any(
            f["sha256"] == story["fetched"]["sha256"] for f in story["config"]["files"])
        assert not story["error"]
    # The listener counted the garbage and kept answering.
    listener = system.probe.last("pnp/services/listener/system")
    assert listener["state"] == "online"
    assert listener["counters"].get("malformed", 0) + listener["counters"].get("rate_limited", 0) > 0
    # The bad assignment is still reported, and only it.
    assert system.probe.last(f"pnp/devices/{bad_mac}/error")


@inside
def test_inside_broker_restarted_mid_storm(system):
    fleet = system.simulate("--count", "30", "--models", MIX, "--assign", "--boot-over", "4",
                            "--address-start", "127.0.4.2", "--mac-start", "4000")
    # Once the phones start booting (the first discovery), take the broker away for a second.
    wait_until(lambda: any(t.endswith("/discovered") for t, _, _ in system.probe.messages), timeout=60)
    system.broker.stop()
    time.sleep(1.0)
    system.broker.start()
    report = finished(fleet)
    assert len(provisioned_macs(report)) == 30
    wait_until(system.all_online, timeout=30)


@inside
@pytest.mark.parametrize("victim", SERVICES)
def test_inside_each_service_killed_mid_storm(system, victim):
    start = 5000 + 100 * SERVICES.index(victim)
    fleet = system.simulate("--count", "20", "--models", MIX, "--assign", "--boot-over", "4",
                            "--address-start", f"127.0.{5 + SERVICES.index(victim)}.2",
                            "--mac-start", str(start))
    wait_until(lambda: any(t.endswith("/discovered") for t, _, _ in system.probe.messages), timeout=60)
    old = system.kill_service(victim)
    report = finished(fleet)
    assert len(provisioned_macs(report)) == 20
    # `pnp up` brought it back as a new process.
    wait_until(lambda: service_pids(system.up.pid).get(victim) not in (None, old), timeout=20)
