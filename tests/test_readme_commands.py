"""Every command line in the README's ``sh`` blocks, exactly as written, exits 0 without a
traceback, with no PNP_* setting at all.

The outer test re-runs this file under ``unshare -n -m`` (NETWORK-SAFETY.md rule 3): port 1883,
SIP port 5060 and the multicast group are then the test's own, and an ``eth0`` made here is a
veth pair within the namespace, nothing can leave by it. The mount namespace lays a copy of the checkout over it
(with the real ``.venv``), so that what the commands write (``.env``, ``var/``, the broker's
password file) never reaches the real checkout. ``./scripts/up`` runs the whole system for the
lines after it; the long-running lines (``mosquitto_sub``, ``pnp monitor``) are started, seen
working, and stopped; ``pnp up`` itself is stopped at the end with Ctrl-C, as the README says.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from services.broker import answers
from tests.support import Probe, loopback_multicast, rerun_in_network_namespace, wait_until

FLAG = "PNP_TEST_README_NETNS"
INSIDE = os.environ.get(FLAG) == "1"
ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("listener", "generator", "fileserver", "notifier", "console")
# Lines not run, and why; every other line of an ``sh`` block is.
NOT_RUN = {
    "./scripts/test": "runs the whole suite, this test included",
    "docker compose up -d --build": "needs a Docker engine and the network (tests/test_deploy_compose.py checks the file)",
}
LONG_RUNNING = {"mosquitto_sub": "", "pnp monitor": "watching"}  # what shows it is working
STDIN = "correct horse battery staple\n"  # `pnp console-user` reads the password from stdin
PHONES_CSV = "mac,sip_server,user_id,password\n001565a1b2c3,pbx.example.com,1002,s3cret\n"


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.strip() for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
            for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def command_of(line: str) -> str:
    return " ".join(shlex.split(line, comments=True)).rstrip(" &")


def test_the_readme_has_command_lines_and_each_is_run_or_says_why_not() -> None:
    commands = [command_of(line) for line in readme_lines()]
    assert "./scripts/up" in commands and any(c.startswith("pnp assign") for c in commands)
    assert set(NOT_RUN) <= set(commands), "a line listed as not run is no longer in the README"


def test_readme_commands_in_a_namespace() -> None:
    if INSIDE:
        pytest.skip("this is the namespace already")
    before = {name: (ROOT / name).exists() for name in (".env", "phones.csv", "var/tls")}
    rerun_in_network_namespace(__file__, "inside", FLAG, timeout=900, unshare=("-n", "-m"))
    # what the commands wrote went to the copy only
    assert {name: (ROOT / name).exists() for name in before} == before


# --- inside the namespaces ---------------------------------------------------------------------


def _cover_the_checkout(copy: Path) -> None:
    """Lay a copy of the checkout (its own .env, var/ and broker password file to come) over
    the real one, with the real .venv inside; private to this mount namespace."""
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "var", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "tests.*",
        "_trial_temp*", "*.egg-info", "build", ".env", "passwd"))
    (copy / ".venv").mkdir()
    subprocess.run(["mount", "--bind", str(ROOT / ".venv"), str(copy / ".venv")], check=True)
    subprocess.run(["mount", "--rbind", str(copy), str(ROOT)], check=True)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    def shown() -> bool:
        assert proc.poll() is None, path.read_text(errors="replace")
        return text in path.read_text(errors="replace")

    wait_until(shown, timeout=timeout, interval=0.1)


class Up:
    """``./scripts/up`` as a user starts it in a terminal: in its own process group."""

    def __init__(self, line: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(["bash", "-c", f"exec {command_of(line)}"], cwd=str(ROOT), env=env,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for_text(log, "pnp up: broker mqtt://", self.proc, timeout=300)
        printed = re.search(r"pnp up: broker mqtt://127\.0\.0\.1:(\d+)", log.read_text())
        assert printed, log.read_text()
        self.port = printed.group(1)
        wait_until(lambda: answers("127.0.0.1", int(self.port)), timeout=30, interval=0.1)
        probe = Probe(f"mqtt://127.0.0.1:{self.port}", "pnp/services/+/+")

        def online(name: str) -> bool:
            topics = {t for t, _, _ in probe.messages if t.startswith(f"pnp/services/{name}/")}
            return any((probe.last(t) or {}).get("state") == "online" for t in topics)

        try:
            wait_until(lambda: all(online(name) for name in SERVICES), timeout=90, interval=0.2)
        finally:
            probe.close()

    def stop(self) -> int:
        """Ctrl-C in the terminal: SIGINT to the whole process group; its exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError("pnp up did not stop on Ctrl-C")


def _run_long(line: str, shows: str, env: dict[str, str], log: Path) -> None:
    proc = subprocess.Popen(["bash", "-c", f"exec {command_of(line)}"], cwd=str(ROOT), env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # mosquitto_sub shows the retained statuses at once; the monitor says it is watching
        _wait_for_text(log, shows or "pnp/services/", proc, timeout=30)
    finally:
        proc.terminate()
        status = proc.wait(15)
    output = log.read_text(errors="replace")
    assert status in (0, -signal.SIGTERM), f"{line}: exit {status}\n{output}"
    assert "Traceback" not in output, f"{line}\n{output}"


@pytest.mark.skipif(not INSIDE, reason="runs only inside the namespaces the outer test makes")
def test_inside_every_readme_line_as_written(tmp_path) -> None:
    loopback_multicast()
    # `pnp setup --sip-interface eth0` names the interface facing the phones: here one end of a
    # veth pair whose other end is in this namespace too, so nothing can leave by it.
    for command in ("ip link add eth0 type veth peer name eth0-peer",
                    "ip addr add 192.168.5.110/24 dev eth0", "ip link set eth0 up"):
        subprocess.run(command.split(), check=True)
    _cover_the_checkout(tmp_path / "checkout")
    (ROOT / "phones.csv").write_text(PHONES_CSV)
    # what a user's shell has: the virtualenv on PATH, no PNP_* variable
    env = {"PATH": f"{ROOT}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    ups: list[Up] = []
    try:
        for number, line in enumerate(readme_lines()):
            command = command_of(line)
            if command in NOT_RUN:
                continue
            if command == "./scripts/up":
                # Each `./scripts/up` starts a section of its own ("a first end-to-end run"): the
                # system before it stops with Ctrl-C, and the machine is fresh again.
                if ups:
                    _stopped_cleanly(ups[-1])
                    shutil.rmtree(ROOT / "var", ignore_errors=True)
                ups.append(Up(line, env, tmp_path / f"up{len(ups)}.log"))
            elif any(command.startswith(long) for long in LONG_RUNNING):
                shows = next(v for k, v in LONG_RUNNING.items() if command.startswith(k))
                _run_long(line, shows, env, tmp_path / f"line{number}.log")
            else:
                # the README's own placeholder: "note the broker port it prints"
                written = line.replace(":PORT", f":{ups[-1].port}") if ups else line
                done = subprocess.run(["bash", "-c", written], cwd=str(ROOT), env=env, input=STDIN,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                assert "Traceback" not in done.stdout + done.stderr, f"{line}\n{done.stderr}"
    finally:
        for up in ups:
            up.stop()
    _stopped_cleanly(ups[-1])


def _stopped_cleanly(up: Up) -> None:
    status = up.stop()
    log = up.log.read_text(errors="replace")
    assert status == 0, log[-4000:]
    assert "Traceback" not in log, log[-8000:]
