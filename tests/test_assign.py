"""``pnp assign`` against a real mosquitto: flags, CSV and JSON files, refusals, --unassign.

Run as a user runs it, a process of its own: the command runs the reactor, once per process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import Probe, wait_until

MAC = "000b82f55284"
ROOT = Path(__file__).resolve().parent.parent


def pnp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def topic(mac: str) -> str:
    return f"pnp/devices/{mac}/assignment"


def test_flags_publish_one_retained_assignment(broker, probe) -> None:
    done = pnp("assign", "--mqtt-url", broker.url, "--mac", "00:0B:82:F5:52:84",
               "--sip-server", "pbx.example.com", "--user-id", "1001", "--password", "s3cret",
               "--display-name", "Alice", "--transport", "tls", "--port", "5061", "--codecs", "g722, pcmu",
               "--vendor", "grandstream", "--model", "GRP2614")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "1 published, 0 refused" in out
    wait_until(lambda: probe.on(topic(MAC)))
    assert json.loads(probe.on(topic(MAC))[-1]) == {
        "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret",
                      "display_name": "Alice", "transport": "tls", "port": 5061}],
        "codecs": ["g722", "pcmu"], "vendor": "grandstream", "model": "GRP2614"}
    assert [r for t, _, r in probe.messages if t == topic(MAC)] == [False]  # live delivery of a retained publish


def test_a_bad_value_is_refused_and_nothing_is_published(broker, probe) -> None:
    done = pnp("assign", "--mqtt-url", broker.url, "--mac", MAC, "--sip-server", "pbx", "--user-id", "1",
               "--transport", "sctp")
    out = done.stdout
    assert done.returncode == 1
    assert "refused flags (000b82f55284): accounts[0].transport: 'sctp' is not one of" in out
    assert "0 published, 1 refused" in out
    assert probe.on(topic(MAC)) == []


def test_csv_publishes_the_good_rows_and_names_the_bad_ones(broker, probe, tmp_path) -> None:
    path = tmp_path / "phones.csv"
    path.write_text(
        "mac,sip_server,user_id,password,display_name,transport,codecs,account2_sip_server,account2_user_id,"
        "key1_type,key1_value,unassign\n"
        "000b82f55284,pbx.example.com,1001,pw1,Alice,udp,g722 pcma,pbx2,2001,blf,1002,\n"
        "000b82f55285,pbx.example.com,1002,pw2,Bob,sctp,,,,,,\n"
        "not-a-mac,pbx.example.com,1003,pw3,Carol,,,,,,,\n"
        "00-0B-82-F5-52-87,,,,,,,,,,,yes\n")
    done = pnp("assign", "--mqtt-url", broker.url, "--file", str(path))
    out = done.stdout
    assert done.returncode == 1
    assert "2 published, 2 refused" in out
    assert "refused line 3 (000b82f55285): accounts[0].transport: 'sctp'" in out
    assert "refused line 4: 'not-a-mac' is not a MAC address" in out
    wait_until(lambda: probe.on(topic(MAC)) and probe.on(topic("000b82f55287")))
    assert json.loads(probe.on(topic(MAC))[-1]) == {
        "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "pw1",
                      "display_name": "Alice", "transport": "udp"},
                     {"sip_server": "pbx2", "user_id": "2001"}],
        "codecs": ["g722", "pcma"], "keys": [{"type": "blf", "value": "1002"}]}
    assert probe.on(topic("000b82f55287")) == [b""]
    assert probe.on(topic("000b82f55285")) == []


def test_csv_with_an_unknown_column_is_refused_whole(broker, tmp_path) -> None:
    path = tmp_path / "phones.csv"
    path.write_text("mac,sip_server,user_id,colour\n000b82f55284,pbx,1,red\n")
    done = pnp("assign", "--mqtt-url", broker.url, "--file", str(path))
    assert done.returncode == 1
    assert "unknown columns: colour" in done.stderr


def test_json_file_both_forms_and_null_unassigns(broker, probe, tmp_path) -> None:
    one = tmp_path / "a.json"
    one.write_text(json.dumps({"000b82f55284": {"accounts": [{"sip_server": "pbx", "user_id": "1"}]},
                               "000b82f55285": None,
                               "000b82f55286": {"accounts": [{"sip_server": "pbx", "user_id": "1", "port": "x"}]}}))
    done = pnp("assign", "--mqtt-url", broker.url, "--file", str(one))
    assert done.returncode == 1
    out = done.stdout
    assert "2 published, 1 refused" in out and "accounts[0].port must be a whole number" in out
    many = tmp_path / "b.json"
    many.write_text(json.dumps([{"mac": "000b82f55288", "profile": "office", "accounts": [{"user_id": "7"}]}]))
    done = pnp("assign", "--mqtt-url", broker.url, "--file", str(many))
    assert done.returncode == 0
    out = done.stdout
    assert "warning: entry 1 (000b82f55288): accounts[0].sip_server is missing" in out
    wait_until(lambda: probe.on(topic("000b82f55288")) and probe.on(topic("000b82f55285")))
    assert probe.on(topic("000b82f55285")) == [b""]
    assert json.loads(probe.on(topic("000b82f55288"))[-1]) == {"profile": "office", "accounts": [{"user_id": "7"}]}


def test_unassign_and_dry_run(broker, probe) -> None:
    done = pnp("assign", "--mqtt-url", broker.url, "--mac", MAC, "--unassign")
    assert done.returncode == 0
    wait_until(lambda: probe.on(topic(MAC)) == [b""])
    done = pnp("assign", "--mqtt-url", broker.url, "--mac", MAC, "--json",
                 '{"accounts": [{"sip_server": "pbx", "user_id": "1"}]}', "--dry-run")
    assert done.returncode == 0
    assert "would publish assignment 000b82f55284" in done.stdout
    assert probe.on(topic(MAC)) == [b""]


def test_unreachable_broker_and_bad_settings() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = pnp("assign", "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--mac", MAC, "--unassign")
    assert done.returncode == 1
    assert "cannot reach the broker" in done.stderr
    assert "Connection refused" in done.stderr, done.stderr  # at once, not after a timeout
    done = pnp("assign", "--mqtt-url", "http://x", "--mac", MAC, "--unassign")
    assert done.returncode == 2
    done = pnp("assign", "--mqtt-url", f"mqtt://127.0.0.1:{port}")
    assert done.returncode == 1
    assert "give --mac" in done.stderr


def test_wait_shows_the_generators_answer(broker, tmp_path) -> None:
    # the generator runs as its own process, as in production
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp_path / "data"),
           "PNP_INSTANCE": "test", "PNP_LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "generator"], env=env,
                            cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        watcher = Probe(broker.url, "pnp/services/generator/+")
        try:
            wait_until(lambda: any(json.loads(p or b"{}").get("state") == "online"
                                   for p in watcher.on("pnp/services/generator/test")), timeout=15)
        finally:
            watcher.close()
        done = pnp("assign", "--mqtt-url", broker.url, "--mac", MAC, "--sip-server", "pbx", "--user-id", "1",
                   "--vendor", "grandstream", "--model", "GRP2612", "--wait", "10")
        out = done.stdout
        assert done.returncode == 0, out + done.stderr
        assert f"published assignment {MAC} (flags): config revision 1 (cfg{MAC}.xml)" in out
        done = pnp("assign", "--mqtt-url", broker.url, "--mac", MAC, "--json",
                   '{"vendor": "grandstream", "model": "GRP2612", "accounts": [{"sip_server": "pbx", '
                   '"user_id": "1"}], "keys": [' + ",".join(['{"type": "blf"}'] * 17) + "]}", "--wait", "10")
        out = done.stdout
        assert "error model_limit: GRP2612 has 16 programmable keys" in out, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_what_the_broker_refuses_is_an_error_not_a_success(tmp_path) -> None:
    from tests.test_deploy_broker import LockedBroker

    broker = LockedBroker(tmp_path / "locked", {"pbx": "pbx-secret-1", "listener": "listener-secret-1"}).start()
    try:
        # the listener's login may not write assignments: the broker answers PUBACK 135
        done = pnp("assign", "--mqtt-url", broker.url("listener"), "--mac", MAC, "--unassign")
        assert done.returncode == 1
        assert "refused 1 of 1 assignment(s)" in done.stderr, done.stderr
        done = pnp("assign", "--mqtt-url", broker.url("pbx").replace("pbx-secret-1", "wrong"),
                   "--mac", MAC, "--unassign")
        assert done.returncode == 1
        assert "refused the login" in done.stderr, done.stderr
        done = pnp("assign", "--mqtt-url", broker.url("pbx"), "--mac", MAC, "--unassign")
        assert done.returncode == 0, done.stderr
    finally:
        broker.stop()


# --- re-arm and rotate (issue 13) -----------------------------------------------------------------

ENROLLING = {"state": "enrolling", "epoch": 2, "since": "2026-12-07T03:00:00.000Z",
             "until": "2026-12-10T03:00:00.000Z", "bound": None, "candidate": None, "mac": MAC,
             "at": "2026-12-07T03:00:00.000Z", "v": 1}


def pnp_in_background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_rearm_publishes_a_retained_command_and_waits_for_the_new_epoch(broker, probe) -> None:
    # the state before: epoch 2 in conflict, as the fileserver left it retained
    probe.publish(f"pnp/devices/{MAC}/assignment", {"accounts": [{"sip_server": "pbx", "user_id": "1"}]},
                  retain=True)
    probe.publish(f"pnp/devices/{MAC}/enrolment", {**ENROLLING, "state": "conflict",
                                                   "addresses": ["10.0.0.5", "10.0.0.9"]}, retain=True)
    proc = pnp_in_background("assign", "--mqtt-url", broker.url, "--rearm", "00:0B:82:F5:52:84", "--wait", "20")
    try:
        wait_until(lambda: probe.on(f"pnp/devices/{MAC}/rearm"), timeout=15)
        command = probe.json_on(f"pnp/devices/{MAC}/rearm")[-1]
        assert set(command) == {"id", "at", "v"} and re.fullmatch(r"[0-9a-f]{32}", command["id"])
        # what the generator and the fileserver do next: the conflict cleared, epoch 3 enrolling
        probe.publish(f"pnp/devices/{MAC}/error", b"", retain=True)
        probe.publish(f"pnp/devices/{MAC}/enrolment", {**ENROLLING, "epoch": 3}, retain=True)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert f"published re-arm {MAC} (id {command['id']}): re-armed: enrolling until 2026-12-10T03:00Z (epoch 3)" in out
    assert "1 published, 0 refused; 1 done, 0 failed, 0 without outcome" in out
    assert [r for t, _, r in probe.messages if t == f"pnp/devices/{MAC}/rearm"] == [False]  # sent retained
    again = Probe(broker.url, f"pnp/devices/{MAC}/rearm")  # the broker keeps it retained
    try:
        wait_until(lambda: again.on(f"pnp/devices/{MAC}/rearm"))
    finally:
        again.close()


def test_rotate_waits_for_the_new_revision_and_says_when_nothing_came(broker, probe) -> None:
    files = {"revision": 4, "mac": MAC, "files": [{"name": f"cfg{MAC}.xml", "sha256": "ab", "size": 9}], "v": 1}
    probe.publish(f"pnp/devices/{MAC}/files", files, retain=True)
    proc = pnp_in_background("assign", "--mqtt-url", broker.url, "--rotate", MAC, "--wait", "20")
    try:
        wait_until(lambda: probe.on(f"pnp/devices/{MAC}/rotate"), timeout=15)
        probe.publish(f"pnp/devices/{MAC}/files", {**files, "revision": 5}, retain=True)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert f": new credential in revision 5 (cfg{MAC}.xml)" in out
    # nobody answers (no generator): published, and exit 3 says the outcome was not seen
    done = pnp("assign", "--mqtt-url", broker.url, "--rotate", MAC, "--rearm", "000b82f55285", "--wait", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"published rotate {MAC}" in done.stdout and "published re-arm 000b82f55285" in done.stdout
    assert "no outcome within 1 s (no assignment is retained for it" in done.stdout
    assert "2 published, 0 refused; 0 done, 0 failed, 2 without outcome" in done.stdout
    # without --wait: published, done
    done = pnp("assign", "--mqtt-url", broker.url, "--rotate", MAC)
    assert done.returncode == 0 and "1 published, 0 refused" in done.stdout, done.stderr


def test_a_generator_error_answers_a_rearm_with_exit_1(broker, probe) -> None:
    proc = pnp_in_background("assign", "--mqtt-url", broker.url, "--rearm", MAC, "--wait", "20")
    try:
        wait_until(lambda: probe.on(f"pnp/devices/{MAC}/rearm"), timeout=15)
        probe.publish(f"pnp/devices/{MAC}/error", {"service": "generator", "code": "rearm",
                                                   "message": "no assignment to re-arm", "at": "x", "v": 1})
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "error rearm: no assignment to re-arm" in out and "0 done, 1 failed" in out


def test_rearm_and_rotate_refuse_what_does_not_fit(broker, probe) -> None:
    cases = ((["--rearm", MAC, "--mac", MAC], "take a MAC each and no assignment"),
             (["--rotate", MAC, "--sip-server", "pbx"], "take a MAC each and no assignment"),
             (["--rearm", MAC, "--rotate", "00:0b:82:f5:52:84"], "--rearm already rotates the credential"),
             (["--rearm", MAC, "--rearm", MAC], "is given twice"),
             (["--rearm", "not-a-mac"], "'not-a-mac' is not a MAC address"))
    for args, why in cases:
        done = pnp("assign", "--mqtt-url", broker.url, *args)
        assert done.returncode == 1 and why in done.stderr, (args, done.stderr)
    done = pnp("assign", "--mqtt-url", broker.url, "--rearm", MAC, "--dry-run")
    assert done.returncode == 0 and f"would publish re-arm {MAC}" in done.stdout
    time.sleep(0.3)
    assert probe.on(f"pnp/devices/{MAC}/rearm") == [] and probe.on(f"pnp/devices/{MAC}/rotate") == []
    assert "--rearm MAC" in pnp("assign", "--help").stdout


def test_under_the_deployment_acl_the_pbx_rearms_and_the_operator_cannot(tmp_path) -> None:
    from tests.test_deploy_broker import Client, LockedBroker

    broker = LockedBroker(tmp_path / "locked", {"pbx": "pbx-secret-1", "operator": "operator-secret-1",
                                                "fileserver": "fileserver-secret-1"}).start()
    try:
        done = pnp("assign", "--mqtt-url", broker.url("operator"), "--rearm", MAC)
        assert done.returncode == 1
        assert "refused 1 of 1 command(s) (is this login allowed to publish re-arm?)" in done.stderr, done.stderr
        fileserver = Client(broker, "fileserver")
        try:
            fileserver.subscribe(f"pnp/devices/{MAC}/rearm")  # the fileserver may read rearm
            proc = pnp_in_background("assign", "--mqtt-url", broker.url("pbx"), "--rearm", MAC, "--wait", "20")
            wait_until(lambda: fileserver.topics(), timeout=15)
            enrolment = json.dumps({**ENROLLING, "epoch": 1}).encode()
            assert fileserver.publish(f"pnp/devices/{MAC}/enrolment", enrolment) in (0, 16)
            out, err = proc.communicate(timeout=30)
        finally:
            fileserver.close()
        assert proc.returncode == 0, out + err
        assert "re-armed: enrolling until" in out
    finally:
        broker.stop()
