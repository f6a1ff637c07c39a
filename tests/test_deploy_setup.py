"""`pnp setup` and `pnp health`'s judgement, without a broker: what an operator runs before
`docker compose up`, and what decides a container's health."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tools import brokersetup
from tools.healthcheck import healthz_url, judge
from services.messages import ServiceStatus
from tests.test_deploy_broker import PNP, REPO


def setup(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PNP, "setup", "--dir", str(root), *args], capture_output=True, text=True, timeout=30)


def site(tmp_path: Path) -> Path:
    (tmp_path / ".env.example").write_text((REPO / ".env.example").read_text())
    return tmp_path


def test_setup_again_keeps_every_value_and_rotate_renews_only_that_user(tmp_path):
    root = site(tmp_path)
    assert setup(root, "--sip-interface", "127.0.0.1").returncode == 0
    first = brokersetup.read_env(root / ".env")
    assert (root / ".env").stat().st_mode & 0o777 == 0o600
    assert first["PNP_SIP_INTERFACE"] == "127.0.0.1"
    assert first["PNP_PUBLIC_URL"] == "http://127.0.0.1:8080/"
    assert first["PNP_INSTANCE"] and first["PNP_FILE_SECRET"]
    # the operator's own edits survive a second run
    text = (root / ".env").read_text().replace("PNP_HTTP_AUTH=off", "PNP_HTTP_AUTH=digest")
    (root / ".env").write_text(text)
    assert setup(root).returncode == 0
    second = brokersetup.read_env(root / ".env")
    assert second == {**first, "PNP_HTTP_AUTH": "digest"}
    assert setup(root, "--rotate", "pbx").returncode == 0
    third = brokersetup.read_env(root / ".env")
    assert third["MQTT_PASSWORD_PBX"] != second["MQTT_PASSWORD_PBX"]
    assert {k: v for k, v in third.items() if k != "MQTT_PASSWORD_PBX"} == \
        {k: v for k, v in second.items() if k != "MQTT_PASSWORD_PBX"}
    hashes = dict(line.split(":", 1) for line in
                  (root / "deploy" / "mosquitto" / "passwd").read_text().splitlines())
    assert brokersetup.verify_password(third["MQTT_PASSWORD_PBX"], hashes["pbx"])
    assert not brokersetup.verify_password(second["MQTT_PASSWORD_PBX"], hashes["pbx"])


def test_a_user_added_to_env_gets_a_password_and_a_login(tmp_path):
    root = site(tmp_path)
    assert setup(root).returncode == 0
    with (root / ".env").open("a") as f:
        f.write("MQTT_PASSWORD_CRM=\n")
    assert setup(root).returncode == 0
    env = brokersetup.read_env(root / ".env")
    assert len(env["MQTT_PASSWORD_CRM"]) == 32
    assert "crm:$7$" in (root / "deploy" / "mosquitto" / "passwd").read_text()


def test_setup_refuses_bad_input_with_one_line_and_status_2(tmp_path):
    bad = setup(site(tmp_path), "--sip-interface", "no-such-if0")
    assert bad.returncode == 2 and "PNP_SIP_INTERFACE" in bad.stderr
    assert not (tmp_path / ".env").exists()
    assert setup(site(tmp_path), "--rotate", "nobody").returncode == 2
    missing = setup(tmp_path / "elsewhere")
    assert missing.returncode == 2 and ".env.example" in missing.stderr


def status(state: str, age: float) -> ServiceStatus:
    at = (datetime.now(timezone.utc) - timedelta(seconds=age)).isoformat(timespec="milliseconds")
    return ServiceStatus(state=state, version="0", started_at=at, at=at.replace("+00:00", "Z"))


def test_health_wants_online_and_fresh():
    now = datetime.now(timezone.utc)
    assert judge(status("online", 5), 95, now) is None
    assert "offline" in judge(status("offline", 5), 95, now)
    assert "old" in judge(status("online", 200), 95, now)  # a hung service stops refreshing


def test_healthz_url_follows_the_fileservers_own_settings():
    assert healthz_url({}) == "http://127.0.0.1:8080/healthz"
    assert healthz_url({"PNP_HTTP_PORT": "8443", "PNP_TLS_CERT": "/etc/pnp/tls/cert.pem",
                        "PNP_HTTP_BIND": "10.0.0.5"}) == "https://10.0.0.5:8443/healthz"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to mosquitto's uid")
def test_setup_hands_the_password_and_acl_files_to_mosquitto_and_no_one_else(tmp_path):
    # mosquitto >= 2.0.17 warns about (later versions refuse) a password or ACL file that is
    # world-readable or owned by another user; git checks the ACL out 0644 and root's.
    root = site(tmp_path)
    shutil.copytree(REPO / "deploy" / "mosquitto", root / "deploy" / "mosquitto",
                    ignore=shutil.ignore_patterns("passwd"))
    assert (root / "deploy" / "mosquitto" / "acl").stat().st_mode & 0o004
    assert setup(root).returncode == 0
    for name in ("passwd", "acl"):
        st = (root / "deploy" / "mosquitto" / name).stat()
        assert (st.st_uid, st.st_gid) == (brokersetup.MOSQUITTO_UID, brokersetup.MOSQUITTO_UID), name
        assert st.st_mode & 0o007 == 0, f"{name} is readable by others"
