"""Starting a private mosquitto: for ``pnp up`` and for the tests.

Each broker gets its own config file, port and persistence directory, so nothing retained is
shared with any other broker on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(Exception):
    pass


INSTALL_HINT = "mosquitto not found on PATH; install it with: apt-get install -y mosquitto"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def answers(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_mosquitto() -> str:
    """The mosquitto binary: PNP_MOSQUITTO, else PATH, else the sbin directories (which a
    non-root user's PATH lacks)."""
    given = os.environ.get("PNP_MOSQUITTO")
    if given:
        if os.access(given, os.X_OK):
            return given
        raise BrokerError(f"PNP_MOSQUITTO={given!r} is not an executable; {INSTALL_HINT.split('; ')[1]}")
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if exe is None:
        raise BrokerError(INSTALL_HINT)
    return exe


class Mosquitto:
    """A mosquitto process on loopback with persistence under ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1",
                 persistence: bool = True, extra_config: str = "") -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port or free_port(host)
        self.persistence = persistence
        self.extra_config = extra_config
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory.resolve()}/",
            "autosave_interval 5",
            "max_queued_messages 100000",
            # without it every hop of the discovery -> NOTIFY path can wait 40 ms for Nagle
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            self.extra_config,
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        exe = find_mosquitto()
        conf = self.write_config()
        self.process = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                raise BrokerError(f"mosquitto exited at start: {err or self.process.returncode}")
            if answers(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not answer on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
