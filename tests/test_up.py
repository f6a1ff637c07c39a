"""`pnp up`: a broker and four service processes, restarted when they die, all gone on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from services.broker import free_port, port_is_free
from tests.support import Probe, wait_until

SERVICES = ("listener", "generator", "fileserver", "notifier")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def up(tmp_path):
    port = free_port()
    env = {**os.environ, "PNP_DATA_DIR": str(tmp_path), "PNP_BROKER_PORT": str(port),
           "PNP_SIP_PORT": str(free_port()), "PNP_HTTP_PORT": str(free_port()),
           "PNP_INSTANCE": "uptest", "PNP_STATUS_INTERVAL": "1"}
    env.pop("PNP_MQTT_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield proc, f"mqtt://127.0.0.1:{port}"
    left = children_of(proc.pid)  # before they are orphaned and lose their parent
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def service_pids(up_pid: int) -> dict[str, int]:
    pids = {}
    for pid in children_of(up_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for name in SERVICES:
            if name.encode() in argv and alive(pid):
                pids[name] = pid
    return pids


def test_up_runs_restarts_and_stops_everything(up):
    proc, url = up
    _wait_broker(url)
    probe = Probe(url, "pnp/services/#")
    try:
        def online():
            return {name for name in SERVICES
                    if (probe.last(f"pnp/services/{name}/uptest") or {}).get("state") == "online"}

        wait_until(lambda: online() == set(SERVICES), timeout=30)

        # A service that dies comes back by itself.
        pids = service_pids(proc.pid)
        assert set(pids) == set(SERVICES)
        os.kill(pids["generator"], signal.SIGKILL)
        wait_until(lambda: service_pids(proc.pid).get("generator") not in (None, pids["generator"]),
                   timeout=15)
        started = len(probe.on("pnp/services/generator/uptest"))
        wait_until(lambda: any(p and p["state"] == "online"
                               for p in probe.json_on("pnp/services/generator/uptest")[started:]),
                   timeout=15)

        # SIGTERM stops the services and the broker; no process is left behind.
        everything = set(children_of(proc.pid))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 0
        wait_until(lambda: not any(alive(p) for p in everything), timeout=5)
        output = proc.stdout.read().decode()
        for name in SERVICES:
            assert f"{name} " in output  # every line is prefixed by its service
        assert "broker stopped" in output
    finally:
        probe.close()


def _wait_broker(url: str) -> None:
    from services.broker import answers

    host, port = url.rsplit("//", 1)[1].split(":")
    wait_until(lambda: answers(host, int(port)), timeout=20)


def test_up_says_how_to_install_mosquitto_when_missing(tmp_path):
    env = {"PATH": str(tmp_path), "PNP_DATA_DIR": str(tmp_path), "HOME": str(tmp_path),
           "PNP_MOSQUITTO": str(tmp_path / "no-mosquitto-here")}
    done = subprocess.run([sys.executable, "-m", "tools.cli", "up"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "apt-get install" in done.stderr


def test_up_refuses_a_broker_port_that_is_taken(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {**os.environ, "PNP_DATA_DIR": str(tmp_path), "PNP_BROKER_PORT": str(port)}
    env.pop("PNP_MQTT_URL", None)
    try:
        done = subprocess.run([sys.executable, "-m", "tools.cli", "up"], env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in done.stdout
    # no service was started against it
    assert not [line for line in done.stdout.splitlines() if line.startswith(SERVICES)]


def test_up_killed_leaves_no_broker_behind(up):
    proc, url = up
    _wait_broker(url)
    wait_until(lambda: any(_is_broker(pid) for pid in children_of(proc.pid)), timeout=10)
    everything = set(children_of(proc.pid))
    proc.kill()
    proc.wait()
    # The broker got SIGTERM from the kernel and the services saw their parent go.
    wait_until(lambda: not any(alive(p) for p in everything), timeout=15)
    host, port = url.rsplit("//", 1)[1].split(":")
    assert port_is_free(int(port))


def _is_broker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].endswith(b"mosquitto")
    except OSError:
        return False
