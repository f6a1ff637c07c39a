"""The compose deployment as an operator runs it, on a real Docker engine (tests/deploy/engine.py:
a private dockerd in network and mount namespaces of its own; nothing it runs can reach or be
reached from outside them).

`pnp setup`, `docker-compose build` (from our Dockerfile, on a Debian-made base, with wheels
fetched on the host), `up -d`, every container healthy, simulated phones of every vendor
provisioned; then the operator's day: the broker restarted, each service restarted, `down` and
`up`, an upgrade (a changed checkout, `build`, `up -d`). After each step every assignment is
still on the broker, every phone's files are still published and served with the same bytes;
at the end the same phones boot again and are provisioned, each login may do exactly what the
ACL gives it, and no container logged a traceback (nor the broker a warning).

Run by scripts/test-deploy (CI's own step), which shows the timings it prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tools import brokersetup
from tests.deploy import engine as eng
from tests.downloads import credentialed_url

REPO = Path(__file__).resolve().parents[2]
PNP = [sys.executable, "-m", "tools.cli"]
SERVICES = ("listener", "generator", "fileserver", "notifier", "console")
CONTAINERS = ("mosquitto", *SERVICES)
# two phones of each vendor the simulator knows
MODELS = "GRP2614,T46S,D785,X4U"
PHONES = 8
BASE_TAG = "pnp-test/python:bookworm"
# the checkout as an operator has it: what the image is built from and what compose reads


def checkout_names() -> list[str]:
    """What a clone of this repository holds at its top (a new package is never forgotten)."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return sorted({line.split("/", 1)[0] for line in listed.stdout.splitlines() if line})


HEALTHY_WITHIN = 240


def missing_tools() -> list[str]:
    return [t for t in ("docker", "dockerd", "docker-compose", "debootstrap", "unshare", "nsenter", "ip")
            if shutil.which(t) is None]


@pytest.fixture(scope="module")
def engine():
    if os.geteuid() != 0:
        pytest.skip("the private Docker engine needs root (unshare, dockerd); CI is root")
    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())} (scripts/test-deploy installs them)")
    # short: socket paths live under it; scripts/test-deploy makes it and cleans up after a kill
    given = os.environ.get("PNP_DEPLOY_ROOT")
    root = Path(given) / "engine" if given else Path(tempfile.mkdtemp(prefix="pnpd-", dir="/tmp"))
    e = eng.Engine(root)
    try:
        e.start()
    except RuntimeError as exc:
        left = e.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"dockerd cannot start on this machine: {exc}; left: {left}")
    try:
        yield e
    finally:
        left = e.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"the engine left behind: {left}"


class Site:
    """The operator's checkout and the commands they type in it."""

    def __init__(self, root: Path, engine: eng.Engine, report: dict) -> None:
        self.root = root
        self.engine = engine
        self.report = report
        self.logs: list[str] = []

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return eng.run("docker-compose", "--ansi", "never", *args, timeout=timeout, env=self.engine.env,
                       cwd=self.root)

    @property
    def env(self) -> dict[str, str]:
        return brokersetup.read_env(self.root / ".env")

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def wait_healthy(self, step: str) -> float:
        """Seconds until every container reports healthy (docker's own healthchecks)."""
        start = time.monotonic()
        states: dict[str, str] = {}
        while time.monotonic() - start < HEALTHY_WITHIN:
            for name in CONTAINERS:
                cid = self.container(name)
                states[name] = self.engine.docker(
                    "inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                    cid).stdout.strip() if cid else "absent"
            if all(s == "running/healthy" for s in states.values()):
                took = round(time.monotonic() - start, 1)
                self.report.setdefault("healthy_after_s", {})[step] = took
                return took
            time.sleep(0.5)
        raise AssertionError(f"{step}: not all healthy within {HEALTHY_WITHIN}s: {states}\n"
                             + self.compose("logs", "--no-color", "--tail", "30").stdout[-6000:])

    def keep_logs(self) -> None:
        """The containers' logs, before a step that recreates them."""
        self.logs.append(self.compose("logs", "--no-color", "--timestamps").stdout)

    def probe(self, command: str, args: dict, timeout: float = 120) -> object:
        env = self.env
        argv = self.engine.in_netns(*PNP[:1], "-m", "tests.deploy.probe", command,
                                    env["MQTT_BIND"], env["MQTT_PORT"], json.dumps(args))
        result = eng.run(*argv, timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        return json.loads(result.stdout)

    def state(self) -> dict[str, dict[str, str]]:
        """Every assignment and every file set (``files``), as the pbx login reads them, the
        working URLs (``published``), which only the notifier's login may read, and the configs
        (each device's HTTP credential), which the console's may."""
        got = self.probe("retained", {"user": "pbx", "password": self.env["MQTT_PASSWORD_PBX"],
                                      "filters": ["pnp/devices/+/assignment", "pnp/devices/+/files"]})
        got.update(self.probe("retained", {"user": "notifier", "password": self.env["MQTT_PASSWORD_NOTIFIER"],
                                           "filters": ["pnp/devices/+/published"]}))
        got.update(self.probe("retained", {"user": "console", "password": self.env["MQTT_PASSWORD_CONSOLE"],
                                           "filters": ["pnp/devices/+/config"]}))
        out: dict[str, dict[str, str]] = {"assignment": {}, "files": {}, "published": {}, "config": {}}
        for topic, payload in got.items():
            _, _, mac, kind = topic.split("/")
            out[kind][mac] = payload
        return out

    def served(self, state: dict[str, dict[str, str]]) -> dict[str, str]:
        """file URL -> what the fileserver answered (status and sha256 of the body), fetched as
        the provisioned phones fetch: the credentialed URL with the device's own credential
        (their bootstrap URLs closed when they were provisioned)."""
        urls = [[credentialed_url(f["url"]), mac, json.loads(state["config"][mac])["auth"]["password"]]
                for mac, p in state["published"].items() for f in json.loads(p)["files"]]
        return self.probe("fetch", {"urls": urls})

    def rearm(self, macs: list[str]) -> None:
        env = self.env
        pbx = f"mqtt://pbx:{env['MQTT_PASSWORD_PBX']}@{env['MQTT_BIND']}:{env['MQTT_PORT']}"
        argv = self.engine.in_netns(*PNP, "assign", "--mqtt-url", pbx, "--wait", "60",
                                    *[a for mac in macs for a in ("--rearm", mac)])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stdout + result.stderr

    def phones(self, *extra: str) -> str:
        env = self.env
        pbx = f"mqtt://pbx:{env['MQTT_PASSWORD_PBX']}@{env['MQTT_BIND']}:{env['MQTT_PORT']}"
        argv = self.engine.in_netns(*PNP, "simulate", "--count", str(PHONES), "--models", MODELS,
                                    "--address-start", "127.0.9.2", "--sip-port", env["PNP_SIP_PORT"],
                                    "--mqtt-url", pbx, "--timeout", "60", "--notify-timeout", "30",
                                    "--quiet", *extra)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0 and f"provisioned: {PHONES}" in result.stdout, \
            result.stdout + result.stderr + self.compose("logs", "--no-color", "--tail", "40").stdout[-8000:]
        return result.stdout


def site_files_only(directory: str, names: list[str]) -> set[str]:
    """What a fresh clone does not have: caches, and a developer's own site files."""
    skip = {"__pycache__", "passwd", "certs"} | {n for n in names if n.endswith(".pem")}
    if Path(directory).name == "conf.d":
        skip |= {n for n in names if n.endswith(".conf")}
    return skip & set(names)


def make_checkout(root: Path) -> None:
    root.mkdir(parents=True)
    for name in checkout_names():
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=site_files_only)
        else:
            shutil.copy(src, root / name)
    (root / "deploy" / "mosquitto" / "conf.d").mkdir(exist_ok=True)
    # the air-gapped path of docs/DEPLOY.md: the build reaches no registry, the wheels come
    # from the host (same commands as the docs)
    eng.run(sys.executable, "-m", "pip", "download", "-q", "-d", str(root / "wheelhouse"),
            "--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
            "--implementation", "cp", str(root), "setuptools>=68", timeout=600)


def set_env(path: Path, **values: str) -> None:
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        assert n == 1, key
    path.write_text(text)


def test_an_operators_day(engine, tmp_path):
    report: dict = {}
    site = Site(tmp_path / "pnp", engine, report)
    t0 = time.monotonic()
    make_checkout(site.root)
    setup = subprocess.run([*PNP, "setup", "--dir", str(site.root), "--sip-interface", "127.0.0.1"],
                           capture_output=True, text=True, timeout=60, cwd=site.root)
    assert setup.returncode == 0, setup.stderr
    # the broker published on a LAN address, not loopback: the host-network services must still
    # reach it (they used to dial 127.0.0.1)
    set_env(site.root / ".env", MQTT_BIND=eng.LAN_ADDRESS)
    report["checkout_and_wheels_s"] = round(time.monotonic() - t0, 1)

    t = time.monotonic()
    engine.import_base("python", BASE_TAG)
    engine.import_base("mosquitto", "eclipse-mosquitto:2")
    report["base_images_s"] = round(time.monotonic() - t, 1)

    try:
        t = time.monotonic()
        site.compose("build", "--build-arg", f"BASE={BASE_TAG}")
        report["build_s"] = round(time.monotonic() - t, 1)
        size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", "pnp:latest").stdout)
        base = int(engine.docker("image", "inspect", "-f", "{{.Size}}", BASE_TAG).stdout)
        report["image_mb"] = round(size / 1e6)
        report["image_above_base_mb"] = round((size - base) / 1e6)

        t = time.monotonic()
        site.compose("up", "-d")  # returns once the broker is healthy and the services created
        site.wait_healthy("first up")
        report["up_to_healthy_s"] = round(time.monotonic() - t, 1)
        site.phones("--assign", "--wait-published", "60")
        before = site.state()
        assert len(before["assignment"]) == PHONES and set(before["files"]) == set(before["assignment"])
        assert set(before["published"]) == set(before["files"])
        files = site.served(before)
        assert files and all(v.startswith("200 ") for v in files.values()), files

        def still_provisioned(step: str) -> None:
            now = site.state()
            assert now["assignment"] == before["assignment"], f"{step}: assignments changed"
            assert set(now["files"]) == set(before["files"]), f"{step}: files changed"
            assert site.served(now) == files, f"{step}: files served differ"

        # the operator's day
        t = time.monotonic()
        site.compose("restart", "mosquitto")
        site.wait_healthy("broker restart")
        report["broker_restart_to_healthy_s"] = round(time.monotonic() - t, 1)
        still_provisioned("broker restart")
        for name in SERVICES:
            t = time.monotonic()
            site.compose("restart", name)
            site.wait_healthy(f"{name} restart")
            report.setdefault("service_restart_to_healthy_s", {})[name] = round(time.monotonic() - t, 1)
        still_provisioned("service restarts")

        site.keep_logs()
        t = time.monotonic()
        site.compose("down")
        site.compose("up", "-d")
        site.wait_healthy("down, up")
        report["down_up_to_healthy_s"] = round(time.monotonic() - t, 1)
        still_provisioned("down, up")

        # an upgrade: a changed checkout, a new image, `up -d` recreates what changed. The
        # changed checkout also carries this machine's CA certificates for pip (the path of
        # docs/DEPLOY.md for a build behind a TLS-inspecting proxy): the build must take them
        # and the image must not keep them, nor the sources and wheels.
        with (site.root / "README.md").open("a") as f:
            f.write("\n")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", site.root / "wheelhouse" / "site-ca.crt")
        old_image = engine.docker("image", "inspect", "-f", "{{.Id}}", "pnp:latest").stdout.strip()
        site.keep_logs()
        t = time.monotonic()
        site.compose("build", "--build-arg", f"BASE={BASE_TAG}")
        report["upgrade_build_s"] = round(time.monotonic() - t, 1)
        assert engine.docker("image", "inspect", "-f", "{{.Id}}", "pnp:latest").stdout.strip() != old_image
        history = engine.docker("history", "--no-trunc", "pnp:latest").stdout
        assert "/src" not in history and "wheelhouse" not in history, history
        t = time.monotonic()
        site.compose("up", "-d")
        site.wait_healthy("upgrade")
        report["upgrade_up_to_healthy_s"] = round(time.monotonic() - t, 1)
        for name in SERVICES:
            image = engine.docker("inspect", "-f", "{{.Image}}", site.container(name)).stdout.strip()
            assert image != old_image, f"{name} still runs the old image after the upgrade"
        still_provisioned("upgrade")

        # the same phones, factory-reset, boot again: a provisioned device gets no Plug and Play
        # until the PBX re-arms it (enrolment); then discovered, notified, provisioned
        site.rearm(sorted(before["assignment"]))
        site.phones()
        findings = site.probe("acl", {"passwords": brokersetup.broker_users(site.env)})
        assert findings == [], "\n".join(findings)
        site.keep_logs()
    except BaseException:
        print(site.compose("logs", "--no-color", "--tail", "60").stdout[-12000:])
        raise
    finally:
        report["total_s"] = round(time.monotonic() - t0, 1)
        print("\ndeployment measured: " + json.dumps(report, indent=1))
        try:
            site.compose("down", "-v", "--rmi", "local", timeout=300)
        except RuntimeError:
            pass  # the engine fixture removes whatever is left

    logs = "\n".join(site.logs)
    assert "Traceback" not in logs, "a container logged a traceback:\n" + \
        "\n".join(l for l in logs.splitlines() if "Traceback" in l or "Error" in l)[:6000]
    broker = [l for l in logs.splitlines() if l.startswith("mosquitto")]
    assert broker, "no broker log kept"
    noisy = [l for l in broker if re.search(r"warning|chown|deprecated|recommended|refuse|read-only", l, re.I)]
    assert not noisy, "the broker complained:\n" + "\n".join(noisy[:20])
