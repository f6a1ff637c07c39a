"""A private Docker engine for the deployment test, and base images made without a registry.

The engine is Debian's dockerd, started inside a network namespace and a mount namespace of its
own (`unshare --net --mount`), with its own data root, exec root, pidfile, socket and cgroup
parent, and the vfs storage driver (no overlay mounts to leak). Inside the namespace there is
`lo` (multicast routed to it, as NETWORK-SAFETY.md asks), a veth pair whose one end stands in
for the host's LAN address, and the bridges dockerd makes: no route leads anywhere else, so
nothing a container sends can leave the machine, and nothing outside can reach a container.
The build runs on this engine too and needs no network: its wheels are fetched on the host.

No container registry is reachable here, so the images compose pulls are stand-ins built from
Debian packages with debootstrap (which reaches Debian's package registry from the host's
network) and `docker import`: a Python 3.11 base for our Dockerfile (build arg BASE), and
`eclipse-mosquitto:2` laid out as the real image is (uid 1883, /mosquitto, the entrypoint that
chowns /mosquitto when started as root: eclipse/mosquitto docker/2.0/Dockerfile and
docker-entrypoint.sh).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

MIRROR = os.environ.get("PNP_DEPLOY_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("PNP_DEPLOY_CACHE", "/var/cache/pnp-deploy-test"))
# the stand-in for the host's address on the phones' LAN (TEST-NET-1, only inside the namespace)
LAN_ADDRESS = "192.0.2.1"

# What the real eclipse-mosquitto:2 image runs first (docker/2.0/docker-entrypoint.sh).
MOSQUITTO_ENTRYPOINT = """#!/bin/sh
set -e
user="$(id -u)"
if [ "$user" = '0' ]; then
\t[ -d "/mosquitto" ] && chown -R mosquitto:mosquitto /mosquitto || true
fi
exec "$@"
"""

# name -> (suite, packages); the Python base matches python:3.11-slim's Python.
BASES = {
    "python": ("bookworm", "python3,python3-venv,ca-certificates"),
    # trixie: a mosquitto >= 2.0.17, which checks the owner and mode of its password and ACL files
    "mosquitto": ("trixie", "mosquitto,mosquitto-clients"),
}
RECIPE_VERSION = "1"
# Docs, manuals, translations and package lists: nothing the images run needs them.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
        "var/cache/apt", "var/lib/apt/lists", "var/log")


def run(*argv: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def base_tarball(name: str) -> Path:
    """A root file system from Debian packages, as a tarball (cached: debootstrap takes ~1 min)."""
    suite, packages = BASES[name]
    key = hashlib.sha256(f"{RECIPE_VERSION} {suite} {packages} {MIRROR} {MOSQUITTO_ENTRYPOINT}"
                         .encode()).hexdigest()[:12]
    tarball = CACHE / f"{name}-{suite}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs-{name}-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        run("debootstrap", "--variant=minbase", f"--include={packages}", suite, str(rootfs), MIRROR,
            timeout=900)
        for sub in TRIM:
            shutil.rmtree(rootfs / sub, ignore_errors=True)
        if name == "mosquitto":
            make_mosquitto_layout(rootfs)
        tmp = tarball.with_suffix(".tmp")
        run("tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tmp), ".")
        os.replace(tmp, tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def make_mosquitto_layout(rootfs: Path) -> None:
    # uid/gid 1883 as in the real image; Debian's package gave its user a dynamic system id
    run("chroot", str(rootfs), "groupmod", "-g", "1883", "mosquitto")
    run("chroot", str(rootfs), "usermod", "-u", "1883", "-g", "1883", "mosquitto")
    for sub in ("config", "data", "log"):
        (rootfs / "mosquitto" / sub).mkdir(parents=True, exist_ok=True)
    run("chown", "-R", "1883:1883", str(rootfs / "mosquitto"))
    entry = rootfs / "docker-entrypoint.sh"
    entry.write_text(MOSQUITTO_ENTRYPOINT)
    entry.chmod(0o755)


class Engine:
    """dockerd in namespaces of its own; everything it made is removed by :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.cgroup_parent = os.environ.get("PNP_DEPLOY_CGROUP") or f"pnp-deploy-test-{os.getpid()}"
        self.process: subprocess.Popen | None = None
        self.log = root / "dockerd.log"

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker and docker-compose: this engine, never the host's default."""
        # Debian's docker client first (another may be on PATH): it has BuildKit built in, which
        # docker-compose 1.29 uses through it with COMPOSE_DOCKER_CLI_BUILD. On vfs every step of
        # the classic builder copies the whole image; BuildKit builds in a fifth of the time.
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""),
                "DOCKER_HOST": self.host, "HOME": str(self.root),
                "DOCKER_CONFIG": str(self.root / "client"), "COMPOSE_INTERACTIVE_NO_CLI": "1",
                "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"}

    def start(self, timeout: float = 60) -> "Engine":
        self.root.mkdir(parents=True, exist_ok=True)
        # sh execs dockerd, so the process we hold is dockerd and its namespaces are the ones
        # every container and every nsenter below joins.
        script = (
            "set -e; ip link set lo up; ip link set lo multicast on; "
            "ip route add 224.0.0.0/4 dev lo; "
            f"ip link add pnplan0 type veth peer name pnplan1; "
            f"ip addr add {LAN_ADDRESS}/24 dev pnplan0; ip link set pnplan1 up; "
            "ip link set pnplan0 up; "
            f"exec dockerd --data-root {self.root}/data --exec-root {self.root}/exec "
            f"--pidfile {self.root}/dockerd.pid --host {self.host} --storage-driver vfs "
            f"--cgroup-parent {self.cgroup_parent} --log-level warn"
        )
        self.process = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited:\n{self.log.read_text()[-4000:]}")
            if self.socket.exists() and subprocess.run(
                    ["docker", "version"], env=self.env, capture_output=True, timeout=30).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer in {timeout}s:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def in_netns(self, *argv: str) -> list[str]:
        """``argv`` run in the engine's network namespace: where the host-network containers are."""
        assert self.process is not None
        return ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--", *argv]

    def docker(self, *args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        return run("docker", *args, timeout=timeout, env=self.env, **kw)

    def import_base(self, name: str, tag: str) -> None:
        changes: list[str] = []
        if name == "mosquitto":
            changes = ['ENTRYPOINT ["/docker-entrypoint.sh"]',
                       'CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]',
                       'VOLUME ["/mosquitto/data", "/mosquitto/log"]', "EXPOSE 1883"]
        argv = ["import"]
        for c in changes:
            argv += ["--change", c]
        self.docker(*argv, str(base_tarball(name)), tag)

    def stop(self) -> list[str]:
        """Stop every container, the daemon, and remove its files and cgroups. What could not be
        removed is returned (and must be empty)."""
        left: list[str] = []
        if self.process and self.process.poll() is None:
            ids = subprocess.run(["docker", "ps", "-aq"], env=self.env, capture_output=True,
                                 text=True, timeout=60).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", "-v", *ids], env=self.env, capture_output=True,
                               timeout=300)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # the shims of containers that outlived dockerd (none, when it stops cleanly)
        for pid in pids_under(self.root):
            os.kill(pid, signal.SIGKILL)
            left.append(f"process {pid} still ran")
        # every mount dockerd made lived in its own mount namespace, gone with it; its cgroups
        # live in the host's hierarchy
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            parent = hierarchy / self.cgroup_parent
            if parent.is_dir():
                for child in sorted(parent.rglob("*"), key=lambda p: -len(p.parts)):
                    if child.is_dir():
                        try:
                            child.rmdir()
                        except OSError as exc:
                            left.append(f"cgroup {child}: {exc}")
                try:
                    parent.rmdir()
                except OSError as exc:
                    left.append(f"cgroup {parent}: {exc}")
        for mount in Path("/proc/self/mounts").read_text().splitlines():
            if str(self.root) in mount.split()[1]:
                left.append(f"mount {mount}")
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.root / "exec", ignore_errors=True)
        return left


def pids_under(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (containerd shims of this engine)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(root) in cmdline and int(proc.name) != os.getpid():
                found.append(int(proc.name))
    return found
