"""compose.yaml, the Dockerfile and .env.example, checked without a Docker engine.

`docker-compose config` (Debian's docker-compose, which `scripts/setup test` installs; it needs
no engine) validates the file against the compose specification and resolves it with the .env
that `pnp setup` writes. The resolved model is then checked against the project itself: every
command is a real `pnp` subcommand, every variable a real setting that parses, and each
service, run with exactly that environment and its own broker user, comes up healthy under the
repository's ACL.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tools import brokersetup
from services import settings as s
from services.broker import free_port
from tools.cli import SERVICES, TOOLS
from tests.test_deploy_broker import LockedBroker, PNP, REPO

COMPOSE = shutil.which("docker-compose")
# docker-compose's own interpreter has PyYAML (a dependency of the Debian package); the
# project's venv does not, and needs none.
COMPOSE_PYTHON = "/usr/bin/python3"
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (scripts/setup test installs it)")


def checkout(root: Path, setup: bool = True, *args: str) -> Path:
    """The deployment files in a fresh directory, after `pnp setup` unless told otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("compose.yaml", ".env.example", "Dockerfile"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "deploy", root / "deploy", ignore=shutil.ignore_patterns("passwd", "*.pem"))
    if setup:
        result = subprocess.run([*PNP, "setup", "--dir", str(root), *args], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    return root


def compose(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COMPOSE, "--project-directory", str(root), "-f", str(root / "compose.yaml"),
                           *args], capture_output=True, text=True, timeout=60, cwd=root)


def resolved(root: Path) -> dict[str, Any]:
    """The compose model after validation and interpolation, as `docker-compose config` prints it."""
    result = compose(root, "config")
    assert result.returncode == 0, result.stderr
    as_json = subprocess.run(
        [COMPOSE_PYTHON, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=result.stdout, capture_output=True, text=True, timeout=30)
    assert as_json.returncode == 0, as_json.stderr
    return json.loads(as_json.stdout)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, Any]:
    if COMPOSE is None:
        pytest.skip("docker-compose not installed (scripts/setup test installs it)")
    root = checkout(tmp_path_factory.mktemp("compose") / "site", True, "--sip-interface", "127.0.0.1")
    m = resolved(root)
    m["_env"] = brokersetup.read_env(root / ".env")
    return m


def pnp_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in model["services"].items() if svc.get("image", "").startswith("pnp")}


def service_settings(command: str) -> list[s.Setting]:
    module = importlib.import_module(SERVICES[command])
    return s.COMMON + module.SETTINGS


def image_data_dir() -> str:
    match = re.search(r"PNP_DATA_DIR=(\S+)", (REPO / "Dockerfile").read_text())
    assert match, "the Dockerfile sets PNP_DATA_DIR"
    return match.group(1)


@needs_compose
def test_compose_file_is_valid_once_setup_has_run(tmp_path):
    root = checkout(tmp_path / "site")
    result = compose(root, "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_refuses_to_run_before_setup(tmp_path):
    root = checkout(tmp_path / "site", setup=False)
    result = compose(root, "config", "-q")
    assert result.returncode != 0
    assert "run pnp setup first" in result.stderr


def test_the_four_services_and_the_broker_are_there(model):
    assert set(model["services"]) == {"mosquitto", *SERVICES}
    assert model["services"]["mosquitto"]["image"] == "eclipse-mosquitto:2"


def test_every_command_is_a_real_pnp_subcommand_with_real_settings(model):
    services = pnp_services(model)
    assert set(services) == set(SERVICES)
    for name, svc in services.items():
        command = svc["command"]
        assert command[0] in SERVICES and command[0] == name, f"{name} runs {command}"
        known = {d.env for d in service_settings(command[0])}
        env = svc.get("environment", {})
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which `pnp {command[0]}` does not take"
        # the values as .env makes them parse, as the service itself will parse them
        s.resolve(service_settings(command[0]), {}, environ={k: str(v) for k, v in env.items()})


def test_every_service_logs_in_as_itself(model):
    for name, svc in pnp_services(model).items():
        url = s.parse_mqtt_url(svc["environment"]["PNP_MQTT_URL"])
        assert url.username == name
        assert url.password == model["_env"][f"MQTT_PASSWORD_{name.upper()}"]


def test_env_example_names_only_real_settings_and_compose_variables():
    example = brokersetup.read_env(REPO / ".env.example")
    text = (REPO / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    all_settings = {d.env for cmd in SERVICES for d in service_settings(cmd)}
    acl_users = set(re.findall(r"^user (\S+)$", (REPO / "deploy" / "mosquitto" / "acl").read_text(), re.M))
    password_users = set(brokersetup.broker_users({k: "x" for k in example}))
    assert password_users == acl_users, "one MQTT_PASSWORD_<USER> per user of the ACL"
    for key in example:
        # the pbx's password is for the other systems; COMPOSE_PROJECT_NAME is compose's own
        assert key in used or key in ("MQTT_PASSWORD_PBX", "COMPOSE_PROJECT_NAME"), \
            f".env.example has {key}, which compose.yaml never uses"
        if key.startswith("PNP_"):
            assert key in all_settings, f".env.example: {key} is no setting of any service"
    missing = used - set(example)
    assert not missing, f"compose.yaml uses {sorted(missing)}, which .env.example lacks"


def test_services_facing_phones_use_the_host_network_the_others_do_not(model):
    """Multicast does not cross Docker's bridges (listener, notifier), and enrolment needs the
    phones' own source addresses, which a published port's proxy hides (fileserver)."""
    services = model["services"]
    for name in ("listener", "notifier", "fileserver"):
        assert services[name].get("network_mode") == "host", f"{name} needs the host's network"
    assert "ports" not in services["fileserver"]  # it listens on the host itself
    assert services["fileserver"]["environment"]["PNP_HTTP_BIND"] == model["_env"]["PNP_HTTP_BIND"]
    for name in ("generator",):
        assert "network_mode" not in services[name]
        # inside a bridge network the host's interface names do not exist
        assert "PNP_SIP_INTERFACE" not in services[name].get("environment", {})
        assert services[name]["environment"]["PNP_MQTT_URL"].endswith("@mosquitto:1883")


def test_the_generator_writes_the_url_the_fileserver_serves(model):
    env = {name: model["services"][name]["environment"] for name in ("generator", "fileserver")}
    assert env["generator"]["PNP_PUBLIC_URL"] == env["fileserver"]["PNP_PUBLIC_URL"]


def test_host_network_services_dial_the_broker_where_it_is_published(model):
    # MQTT_BIND may be the host's LAN address: then nothing listens on 127.0.0.1
    bind = model["_env"]["MQTT_BIND"]
    for name in ("listener", "notifier", "fileserver"):
        url = s.parse_mqtt_url(model["services"][name]["environment"]["PNP_MQTT_URL"])
        assert (url.host, url.port) == (bind, int(model["_env"]["MQTT_PORT"])), name
    published = model["services"]["mosquitto"]["ports"][0]
    # docker-compose 1.29 prints the short form, newer ones the long
    host_ip = published["host_ip"] if isinstance(published, dict) else published.rsplit(":", 2)[0]
    assert host_ip == bind


def named_volumes(svc: dict[str, Any]) -> dict[str, str]:
    """volume name -> mount point (docker-compose prints either the long or the short form)."""
    found = {}
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            if v["type"] == "volume":
                found[v["source"]] = v["target"]
        elif not v.startswith(("/", ".")):
            source, target = v.split(":")[:2]
            found[source] = target
    return found


def test_restart_volumes_and_startup_order(model):
    data_dir = image_data_dir()
    volumes_seen = set()
    for name, svc in model["services"].items():
        assert svc["restart"] == "unless-stopped", name
        if name == "mosquitto":
            continue
        assert svc["depends_on"] == {"mosquitto": {"condition": "service_healthy"}}, name
        named = named_volumes(svc)
        assert list(named.values()) == [data_dir], f"{name}: one named volume at {data_dir}"
        volumes_seen |= set(named)
    assert len(volumes_seen) == len(SERVICES), "each service keeps its database in a volume of its own"
    assert volumes_seen <= set(model["volumes"])


def test_healthchecks_are_pnp_health_for_each_service(model):
    for name, svc in pnp_services(model).items():
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "pnp", "health", name], test
    assert "health" in TOOLS, "pnp health is a real subcommand"
    assert pnp_services(model)["fileserver"]["healthcheck"]["test"][4:] == ["--healthz"]


def test_the_broker_healthcheck_passes_on_the_repository_config(model, tmp_path):
    passwords = brokersetup.broker_users(model["_env"])
    broker = LockedBroker(tmp_path / "broker", passwords).start()
    try:
        argv = list(model["services"]["mosquitto"]["healthcheck"]["test"])
        assert argv[0] == "CMD"
        # `config` prints $$ still escaped, so that its output can be read again; the engine
        # gets a single $.
        argv = [a.replace("$$", "$") for a in argv[1:]]
        argv[argv.index("-p") + 1] = str(broker.port)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        assert result.returncode == 0, result.stderr
    finally:
        broker.stop()


def test_image_runs_pnp_as_a_non_root_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    # the public base by default; another (a registry-less build) only through the build arg
    assert re.search(r"^ARG BASE=python:3\.11-slim$", dockerfile, re.M)
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert stages and set(stages) == {"${BASE}"}, stages
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["pnp"\]$', dockerfile, re.M)


def build_context(root: Path) -> set[str]:
    """The files a `docker build` of ``root`` is sent: docker-py's own .dockerignore matcher,
    the one docker-compose builds with."""
    script = ("import json, sys; from docker.utils.build import exclude_paths; "
              "root = sys.argv[1]; rules = open(root + '/.dockerignore').read().splitlines(); "
              "json.dump(sorted(exclude_paths(root, rules)), sys.stdout)")
    out = subprocess.run([COMPOSE_PYTHON, "-c", script, str(root)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return set(json.loads(out))


@needs_compose
def test_build_context_holds_the_packages_and_no_secrets(tmp_path):
    """The .dockerignore rules on a tree with every package of the project and everything that
    must stay out."""
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in include]
    keep = ["pyproject.toml", "README.md", *(f"{p}/__init__.py" for p in packages),
            *(f"{p}/templates/phone.xml.j2" for p in packages),
            "wheelhouse/jinja2-3.1.6-py3-none-any.whl", "wheelhouse/proxy-ca.crt"]
    leave_out = [".env", "deploy/mosquitto/passwd", "deploy/tls/key.pem", ".git/config",
                 ".venv/bin/python", "tests/test_x.py", "var/generator.db", "docs/DEPLOY.md",
                 "services/__pycache__/cli.cpython-311.pyc", "pnp_provisioning.egg-info/PKG-INFO", "wheelhouse/proxy-ca.key", "wheelhouse/.netrc"]
    for name in keep + leave_out:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    shutil.copy(REPO / ".dockerignore", tmp_path / ".dockerignore")
    context = build_context(tmp_path)
    assert set(keep) <= context, f"left out of the image: {sorted(set(keep) - context)}"
    assert not set(leave_out) & context, f"sent to the build: {sorted(set(leave_out) & context)}"


@needs_compose
def test_the_image_install_has_every_template_and_schema_and_the_pnp_command(tmp_path):
    """What `pip install /src` in the Dockerfile builds: a wheel from exactly the build context
    (the repository through .dockerignore), which must carry every non-Python file the
    packages load (templates, schemas) and the `pnp` entry point."""
    context = build_context(REPO)
    src = tmp_path / "src"
    for name in context:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--disable-pip-version-check", str(src), "-w", str(tmp_path / "wheel")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {n for n in context if n.endswith((".j2", ".json")) and "/" in n}
    assert data, "the packages ship templates and schemas"
    assert data <= names, f"missing from the image: {sorted(data - names)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pnp = tools.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def run_service(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([*PNP, name], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def health(name: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PNP, "health", name, *extra], env=env, capture_output=True, text=True, timeout=20)


def test_the_compose_services_come_up_healthy_and_provision_phones_under_the_acl(model, tmp_path):
    """The compose environment, as resolved, with only what a container changes replaced: the
    broker's address (a private one with the repository's ACL), free ports, a data directory.
    Then simulated phones on loopback, assigned with the pbx login, go all the way through."""
    broker = LockedBroker(tmp_path / "broker", brokersetup.broker_users(model["_env"])).start()
    http_port = free_port()
    sip_port = free_port()  # the listener's and the notifier's; loopback only, never 5060
    procs: dict[str, subprocess.Popen] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        for name, svc in pnp_services(model).items():
            env = {k: str(v) for k, v in svc["environment"].items()}
            url = s.parse_mqtt_url(env["PNP_MQTT_URL"])
            env["PNP_MQTT_URL"] = f"mqtt://{url.username}:{url.password}@127.0.0.1:{broker.port}"
            env["PNP_DATA_DIR"] = str(tmp_path / name)
            env["PNP_STATUS_INTERVAL"] = "1"
            if "PNP_SIP_PORT" in env:
                env["PNP_SIP_PORT"] = str(sip_port)
            if "PNP_HTTP_PORT" in env:
                env["PNP_HTTP_PORT"] = str(http_port)
            if "PNP_PUBLIC_URL" in env:  # the fileserver's, and the generator writes it into files
                env["PNP_PUBLIC_URL"] = f"http://127.0.0.1:{http_port}/"
            if "PNP_CONSOLE_PORT" in env:  # the container's 0.0.0.0 is this host's loopback here
                env["PNP_CONSOLE_PORT"] = str(free_port())
                env["PNP_CONSOLE_BIND"] = "127.0.0.1"
            env.update(PATH=os.environ.get("PATH", ""), PNP_LOG_FORMAT="text")
            envs[name] = env
            procs[name] = run_service(name, env, tmp_path / f"{name}.log")
        deadline = time.monotonic() + 20
        pending = set(procs)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                assert procs[name].poll() is None, (tmp_path / f"{name}.log").read_text()
                extra = ("--healthz",) if name == "fileserver" else ()
                if health(name, envs[name], "--timeout", "2", *extra).returncode == 0:
                    pending.discard(name)
            time.sleep(0.2)
        assert not pending, {n: health(n, envs[n]).stderr for n in pending}
        # Your PBX assigns three phones of three vendors; they boot, are notified, fetch,
        # reboot and fetch the same file again.
        pbx = f"mqtt://pbx:{model['_env']['MQTT_PASSWORD_PBX']}@127.0.0.1:{broker.port}"
        phones = subprocess.run(
            [*PNP, "simulate", "--count", "3", "--models", "GRP2614,T46S,D785", "--assign",
             "--address-start", "127.0.9.2", "--sip-port", str(sip_port), "--mqtt-url", pbx,
             "--timeout", "20", "--wait-published", "10", "--notify-timeout", "10", "--quiet"],
            env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True, timeout=90)
        logs = {n: (tmp_path / f"{n}.log").read_text() for n in procs}
        assert phones.returncode == 0, phones.stdout + phones.stderr + "\n".join(logs.values())
        assert "provisioned: 3" in phones.stdout
        for name, log in logs.items():
            assert "refused" not in log.lower(), f"{name} was refused something by the broker:\n{log}"
        # and stopped, the same check says unhealthy (the last will or the clean offline status)
        procs["generator"].send_signal(signal.SIGTERM)
        procs["generator"].wait(10)
        result = health("generator", envs["generator"])
        assert result.returncode == 1 and "offline" in result.stderr
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        broker.stop()
