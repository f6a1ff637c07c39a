"""Starting a private mosquitto: for ``pnp up`` and for the tests.

Each broker gets its own config file, port and persistence directory, so nothing retained is
shared with any other broker on the machine.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class BrokerError(Exception):
    pass


# Lines of a test broker's output kept for an error message; the rest is read and dropped.
OUTPUT_KEPT = 200

INSTALL_HINT = "mosquitto not found on PATH; install it with: apt-get install -y mosquitto"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``port``: as mosquitto does, with SO_REUSEADDR, so that the
    closed connections of a broker that just stopped (TIME_WAIT) do not count as taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    """A mosquitto process on loopback with persistence under ``directory``.

    :meth:`start` runs it as a plain subprocess (for the tests); ``pnp up`` instead spawns
    :meth:`argv` itself so that it can read the output and restart the broker like a service.
    """

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1",
                 persistence: bool = True, extra_config: str = "") -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port or free_port(host)
        self.persistence = persistence
        self.extra_config = extra_config
        self.process: subprocess.Popen | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_KEPT)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def conf_d(self) -> Path:
        """Site additions for this broker (``*.conf``), included when the folder exists."""
        return self.directory / "conf.d"

    def write_config(self) -> Path:
        make_private_dir(self.directory)
        conf = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory.resolve()}/",
            # A crash (kill -9, power cut) loses at most the last 5 s of retained changes; a
            # stop saves everything. The services put back what they own (docs/DEPLOY.md).
            "autosave_interval 5",
            "autosave_on_changes false",
            "max_queued_messages 100000",
            # without it every hop of the discovery -> NOTIFY path can wait 40 ms for Nagle
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0 and not re.search(r"^\s*user\s", self.extra_config, re.MULTILINE):
            # Started as root, mosquitto would drop to user `mosquitto`, which can neither write
            # a persistence directory that is private to us (0700) nor even reach one under a
            # root-only parent (/root, a 0700 PNP_DATA_DIR): it then saves nothing, and a
            # restart loses every retained assignment. So it stays root, like the four services
            # that `pnp up` runs next to it: it listens on loopback only, and the services
            # (which face the LAN) already hold root's rights. Mosquitto warns once at start.
            # A non-root user needs nothing: mosquitto then simply runs as that user.
            lines.append("user root")
        if self.conf_d.is_dir():
            lines.append(f"include_dir {self.conf_d.resolve()}")
        lines.append(self.extra_config)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return conf

    def argv(self) -> list[str]:
        """The command that runs this broker in the foreground, its config written."""
        return [find_mosquitto(), "-c", str(self.write_config())]

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        argv = self.argv()
        self.output.clear()
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        # Read stderr for as long as the broker runs: unread, a full pipe (64 KiB of log lines)
        # would block mosquitto on its next log line, and every client with it.
        self._reader = threading.Thread(target=self._drain, args=(self.process.stderr,),
                                        name=f"mosquitto-{self.port}-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(2)
                err = "; ".join(self.output).strip()
                raise BrokerError(f"mosquitto exited at start: {err or self.process.returncode}")
            if answers(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not answer on {self.host}:{self.port} within {timeout}s")

    def _drain(self, stream: Any) -> None:
        with stream:
            for raw in stream:
                self.output.append(raw.decode("utf-8", "replace").rstrip("\n"))

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


def make_private_dir(path: Path) -> None:
    """``path`` and its missing parents, with ``path`` itself readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
