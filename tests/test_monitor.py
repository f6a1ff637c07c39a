"""`pnp monitor`: one readable line per event from a real broker; hostile payloads never stop it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

from tools.monitor import Formatter, describe, redact

MAC = "000b82f55284"


def test_each_event_reads_as_one_line_with_its_key_facts():
    f = Formatter("pnp")
    line = f.line(f"pnp/devices/{MAC}/discovered", json.dumps(
        {"vendor": "grandstream", "model": "GRP2614", "firmware": "1.0.0.31", "ip": "127.0.0.2",
         "port": 5080, "boot": 1}).encode(), False, at="2026-11-27T03:00:00.000Z")
    assert line == (f"2026-11-27T03:00:00.000Z  {MAC}  discovered  "
                    "grandstream GRP2614 1.0.0.31 at 127.0.0.2:5080 boot 1")
    assert describe("notify", {"status": "rejected", "code": 488, "reason": "Not Acceptable Here",
                               "attempts": 1, "revision": 3, "rtt_ms": 2.5, "kind": "ua-profile"}) == (
        "NOTIFY rejected 488 Not Acceptable Here attempt(s) 1 2.5 ms rev 3 ua-profile")
    assert describe("fetched", {"file": "cfg.xml", "status": 304, "client": "127.0.0.2",
                                "provisioned": True, "user_agent": "Grandstream"}) == (
        "GET cfg.xml 304 by 127.0.0.2 PROVISIONED (Grandstream)")
    assert describe("error", {"service": "generator", "code": "schema", "message": "bad",
                              "field": "accounts"}) == "ERROR generator/schema: bad [accounts]"
    assert describe("assignment", None) == "unassigned"
    assert describe("error", None) == "error resolved"


def test_secrets_and_file_contents_never_show():
    assignment = {"accounts": [{"user_id": "1001", "password": "s3cret"}]}
    assert "s3cret" not in describe("assignment", assignment)
    config = {"files": [{"name": "a.xml", "content": "<P34>s3cret</P34>", "size": 17}], "revision": 1}
    assert "s3cret" not in describe("config", config)
    f = Formatter("pnp", as_json=True)
    for kind, data in (("assignment", assignment), ("config", config)):
        out = f.line(f"pnp/devices/{MAC}/{kind}", json.dumps(data).encode(), False)
        assert "s3cret" not in out
    assert redact({"a": [{"Password": "x"}]}) == {"a": [{"Password": "***"}]}
    # a broker without the deployment ACL shows published to anyone: the monitor still hides the path
    urls = {"url": "http://10.0.0.1:8080/p/SECRETTOKEN/", "revision": 2,
            "files": [{"name": "a.xml", "url": "http://10.0.0.1:8080/p/SECRETTOKEN/a.xml"}]}
    assert "SECRETTOKEN" not in describe("published", urls)
    for as_json in (True, False):
        out = Formatter("pnp", as_json=as_json).line(f"pnp/devices/{MAC}/published", json.dumps(urls).encode(), False)
        assert "SECRETTOKEN" not in out and ("10.0.0.1:8080/…" in out if as_json else "rev 2" in out), out


def test_enrolment_and_the_operators_commands_read_as_events():
    assert describe("enrolment", {"state": "conflict", "epoch": 2, "addresses": ["10.0.0.5", "10.0.0.9"],
                                  "reason": "a second address asked"}) == (
        "ENROLMENT conflict 10.0.0.5 and 10.0.0.9 (epoch 2): a second address asked")
    assert describe("enrolment", {"state": "enrolling", "epoch": 3, "until": "2026-12-10T03:05:00.000Z"}) == (
        "ENROLMENT enrolling until 2026-12-10T03:05Z (epoch 3)")
    assert describe("enrolment", None) == "enrolment removed"
    assert describe("rearm", {"id": "5f0c3b2a9d8e4f10a1b2c3d4e5f60718", "at": "2026-12-07T03:00:00.000Z"}) == (
        "re-arm requested (id 5f0c3b2a9d8e) at 2026-12-07T03:00:00.000Z")
    assert describe("rotate", {"id": "ab", "at": "x"}).startswith("credential rotation requested")
    assert describe("fetched", {"file": "c.xml", "status": 200, "client": "10.0.0.5", "provisioned": True,
                                "auth": "device", "user_agent": "Yealink"}) == (
        "GET c.xml 200 by 10.0.0.5 PROVISIONED with device credentials (Yealink)")
    assert describe("published", {"url": "http://h:8080/p/T/", "revision": 2, "enrolling": False}).endswith(
        "(not enrolling: no NOTIFY)")
    assert Formatter("pnp", kinds={"enrolment"}).line(f"pnp/devices/{MAC}/enrolment", b'{"state":"expired"}', False)


def test_the_device_credential_in_a_config_never_shows():
    config = {"files": [], "revision": 2,
              "auth": {"user": MAC, "password": "cUrReNt-pw", "previous": "oLd-pw", "rotate": "id-1"},
              "enrol": {"assignment": "0123456789abcdef", "rearm": ""}}
    out = Formatter("pnp", as_json=True).line(f"pnp/devices/{MAC}/config", json.dumps(config).encode(), False)
    assert "cUrReNt-pw" not in out and "oLd-pw" not in out and MAC in out
    assert json.loads(out)["data"]["auth"] == {"user": MAC, "password": "***", "previous": "***", "rotate": "id-1"}
    assert redact({"auth": {"user": MAC, "password": "p", "previous": None}}, "config")["auth"]["previous"] is None


def test_malformed_payloads_are_shown_not_fatal():
    f = Formatter("pnp")
    for raw in (b"{nope", b"\xff\xfe", b"[1,2]", b"42", b'"text"', b"{}", b'{"accounts": "x"}',
                b'{"files": [1, null, {"name": []}]}', b'{"rtt_ms": "fast", "status": []}'):
        for kind in ("discovered", "assignment", "config", "published", "files", "notify", "fetched", "error",
                     "enrolment", "rearm", "rotate"):
            line = f.line(f"pnp/devices/{MAC}/{kind}", raw, False)
            assert line and "\n" not in line and MAC in line
    assert "unreadable payload" in f.line(f"pnp/devices/{MAC}/notify", b"{nope", False)


def test_filters_and_retained():
    f = Formatter("pnp", macs={MAC}, kinds={"notify"})
    assert f.line(f"pnp/devices/{MAC}/notify", b"{}", False)
    assert f.line(f"pnp/devices/{MAC}/fetched", b"{}", False) is None
    assert f.line("pnp/devices/001565000001/notify", b"{}", False) is None
    assert f.line(f"pnp/devices/{MAC}/notify", b"{}", True) is None  # state, not an event
    assert Formatter("pnp", retained=True).line(f"pnp/devices/{MAC}/notify", b"{}", True).endswith("(retained)")
    svc = Formatter("pnp").line("pnp/services/listener/box", b'{"state":"online","version":"0.1.0"}', False)
    assert "listener/box" in svc and "online v0.1.0" in svc


def test_pnp_monitor_streams_live_events(broker, probe):
    probe.publish(f"pnp/devices/{MAC}/discovered", {"vendor": "old"}, retain=True)
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "monitor", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        # the monitor is subscribed once it prints the marker we send
        import time

        deadline = time.monotonic() + 15
        first = None
        while first is None and time.monotonic() < deadline:
            probe.publish("pnp/devices/ffffffffffff/notify", {"status": "sent"})
            try:
                first = lines.get(timeout=0.3)
            except queue.Empty:
                pass
        assert first is not None, proc.stderr.read() if proc.poll() is not None else "no output"
        probe.publish(f"pnp/devices/{MAC}/error", b"\x00garbage{")
        probe.publish(f"pnp/devices/{MAC}/fetched", {"file": "cfg.xml", "status": 200, "client": "127.0.0.2",
                                                     "provisioned": False})
        got = []
        while len(got) < 2:
            event = json.loads(lines.get(timeout=10))
            if event["who"] == MAC:
                got.append(event)
        assert got[0]["event"] == "error" and got[0]["error"].startswith("not JSON")
        assert got[1]["event"] == "fetched" and got[1]["data"]["status"] == 200
        assert all(not e["retained"] for e in got)
        assert proc.poll() is None  # still running after the garbage
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
