"""`pnp devices`: where each device stands, from the retained topics of a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tools.devices import fold, select, table

MAC = "000b82f55284"

DISC = {"mac": MAC, "vendor": "grandstream", "model": "GRP2614", "firmware": "1.0.0.31",
        "ip": "127.0.0.2", "port": 5080, "seen_at": "2026-11-27T03:00:00.000Z"}
ASSIGN = {"vendor": "grandstream", "model": "GRP2614",
          "accounts": [{"sip_server": "pbx", "user_id": "1001", "password": "s3cret", "display_name": "A"}]}
CONFIG = {"files": [{"name": f"cfg{MAC}.xml", "content": "<x/>", "sha256": "ab", "size": 4,
                     "content_type": "application/xml", "encoding": "utf-8"}],
          "revision": 2, "template": "grandstream/grp26xx", "vendor": "grandstream"}
# devices/{mac}/files (what an operator login reads); published says the same with URLs
PUB = {"files": [{"name": f"cfg{MAC}.xml", "sha256": "ab", "size": 40}], "revision": 2}
NOTIFY_OK = {"status": "accepted", "code": 200, "attempts": 1, "url": "http://127.0.0.1:8080/…", "revision": 2,
             "call_id": "c", "at": "2026-11-27T03:00:01.000Z"}
FETCHED = {"file": f"cfg{MAC}.xml", "sha256": "ab", "status": 200, "client": "127.0.0.2",
           "user_agent": "x", "provisioned": False, "at": "2026-11-27T03:00:02.000Z", "revision": 2}


def stage(**payloads):
    d = fold(MAC, payloads)
    return d.stage, d.detail


def test_the_flow_step_by_step():
    assert stage(discovered=DISC)[0] == "awaiting-assignment"
    assert stage(assignment=ASSIGN)[0] == "assigned"
    assert stage(discovered=DISC, assignment=ASSIGN)[0] == "discovered"
    assert stage(discovered=DISC, assignment=ASSIGN, config=CONFIG) == ("rendered", f"rev 2: cfg{MAC}.xml")
    assert stage(discovered=DISC, assignment=ASSIGN, config=CONFIG, files=PUB) == ("published", f"rev 2: cfg{MAC}.xml")
    assert stage(assignment=ASSIGN, config=CONFIG, files=PUB)[1].endswith("(waiting for the phone to boot)")
    # a broker without the ACL: published alone (the working URLs) gives the same stage, no URL
    url = "http://10.0.0.1:8080/p/SECRETTOKEN/"
    full = {"url": url, "files": [{"name": f"cfg{MAC}.xml", "url": url + f"cfg{MAC}.xml", "sha256": "ab"}],
            "revision": 2}
    assert stage(discovered=DISC, config=CONFIG, published=full) == ("published", f"rev 2: cfg{MAC}.xml")
    s = dict(discovered=DISC, assignment=ASSIGN, config=CONFIG, files=PUB, notify=NOTIFY_OK)
    assert stage(**s)[0] == "notified"
    assert stage(**s, fetched=FETCHED)[0] == "fetched"
    done = stage(**s, fetched={**FETCHED, "status": 304, "provisioned": True})
    assert done[0] == "provisioned" and f"cfg{MAC}.xml" in done[1]


def test_identity_comes_from_discovery_else_assignment():
    d = fold(MAC, {"discovered": DISC, "assignment": ASSIGN})
    assert (d.vendor, d.model, d.firmware, d.ip) == ("grandstream", "GRP2614", "1.0.0.31", "127.0.0.2")
    d = fold(MAC, {"assignment": {**ASSIGN, "vendor": "yealink", "model": "T46S"}})
    assert (d.vendor, d.model, d.ip) == ("yealink", "T46S", "")


def test_errors_win_and_say_what_is_wrong():
    err = {"service": "generator", "code": "schema", "message": "accounts[0].user_id is missing",
           "field": "accounts[0].user_id", "at": "2026-11-27T03:00:03.000Z"}
    assert stage(discovered=DISC, assignment=ASSIGN, error=err) == (
        "error", "generator: accounts[0].user_id is missing [accounts[0].user_id]")
    rejected = {**NOTIFY_OK, "status": "rejected", "code": 488, "reason": "Not Acceptable Here", "attempts": 1}
    assert stage(discovered=DISC, config=CONFIG, files=PUB, notify=rejected) == (
        "error", "NOTIFY rejected: 488 Not Acceptable Here after 1 attempt(s)")
    timeout = {**NOTIFY_OK, "status": "timeout", "code": None, "reason": "", "attempts": 11}
    assert stage(discovered=DISC, config=CONFIG, files=PUB, notify=timeout)[1] == (
        "NOTIFY timeout after 11 attempt(s)")


def test_steps_of_an_older_revision_do_not_count():
    newer = {**CONFIG, "revision": 3}
    old_fetch = {**FETCHED, "provisioned": True}
    assert stage(discovered=DISC, config=newer, files={**PUB, "revision": 3}, fetched=old_fetch)[0] == "published"


def test_hostile_payloads_do_not_break_the_view():
    for junk in (None, [], "x", 5, {"files": "nope", "revision": "x"}, {"_error": "payload is not JSON"}):
        d = fold(MAC, {k: junk for k in ("discovered", "config", "published", "files", "notify", "fetched")})
        assert d.stage in ("awaiting-assignment", "rendered", "published", "notified", "fetched")
    d = fold(MAC, {"error": {"_error": "payload is not JSON"}})
    assert d.stage == "error" and "payload is not JSON" in d.detail


def test_filters_and_table():
    devices = [fold("000b82000001", {"discovered": DISC}),
               fold("001565000002", {"assignment": {**ASSIGN, "vendor": "yealink"}})]
    assert [d.mac for d in select(devices, {"assigned"})] == ["001565000002"]
    assert [d.mac for d in select(devices, vendor="GrandStream")] == ["000b82000001"]
    assert [d.mac for d in select(devices, mac="00:15:65")] == ["001565000002"]
    text = table(devices)
    assert text.splitlines()[0].split() == ["MAC", "VENDOR", "MODEL", "FIRMWARE", "IP", "STAGE", "ENROLMENT",
                                            "DETAIL"]
    assert "awaiting-assignment" in text


ENROLLING = {"state": "enrolling", "epoch": 1, "since": "2026-11-27T02:59:00.000Z",
             "until": "2026-11-30T02:59:00.000Z", "bound": None, "candidate": "127.0.0.2", "reason": "assignment",
             "mac": MAC, "at": "2026-11-27T03:00:00.500Z", "v": 1}


def test_the_enrolment_state_is_shown_next_to_the_stage():
    flow = dict(discovered=DISC, assignment=ASSIGN, config=CONFIG, files=PUB)
    d = fold(MAC, {**flow, "enrolment": ENROLLING})
    assert (d.stage, d.enrolment) == ("published", "enrolling")
    assert d.enrolment_detail == "enrolling until 2026-11-30T02:59Z, first seen at 127.0.0.2 (epoch 1)"
    assert d.updated_at == "2026-11-27T03:00:00.500Z"
    # a conflict: the fileserver's error names both addresses; the column says them too
    conflict = {**ENROLLING, "state": "conflict", "addresses": ["127.0.0.2", "127.0.0.9"]}
    err = {"service": "fileserver", "code": "conflict", "at": "2026-11-27T03:00:02.000Z",
           "message": "two addresses asked for 000b82f55284: 127.0.0.2 and 127.0.0.9; "
                      "nothing is served until pnp assign --rearm 000b82f55284"}
    d = fold(MAC, {**flow, "enrolment": conflict, "error": err})
    assert d.stage == "error" and "127.0.0.9" in d.detail and "--rearm" in d.detail
    assert d.enrolment_detail == "conflict 127.0.0.2 and 127.0.0.9 (epoch 1)"
    # expired before the phone came: the detail says what to do instead of "waiting for the phone"
    expired = {**ENROLLING, "state": "expired", "candidate": None}
    d = fold(MAC, {"assignment": ASSIGN, "config": CONFIG, "files": PUB, "enrolment": expired})
    assert d.enrolment == "expired" and "waiting for the phone" not in d.detail
    assert d.detail.endswith(f"(enrolment expired: pnp assign --rearm {MAC})")
    provisioned = {**ENROLLING, "state": "provisioned", "bound": "127.0.0.2"}
    d = fold(MAC, {**flow, "enrolment": provisioned, "fetched": {**FETCHED, "provisioned": True}})
    assert (d.stage, d.enrolment_detail) == ("provisioned", "provisioned at 127.0.0.2 (epoch 1)")
    # none published (an older fileserver): nothing claimed
    d = fold(MAC, flow)
    assert (d.enrolment, d.enrolment_detail) == ("", "")
    devices = [fold("000b82000001", {"enrolment": ENROLLING}), fold("000b82000002", {"enrolment": expired}),
               fold("000b82000003", {"discovered": DISC})]
    assert [x.mac for x in select(devices, enrolment={"expired", "conflict"})] == ["000b82000002"]
    assert "enrolling until 2026-11-30T02:59Z" in table(devices)


def _pnp(broker, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "tools.cli", "devices", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_pnp_devices_reads_the_retained_topics(broker, probe):
    a, b, c = "000b82000001", "001565000002", "000413000003"
    probe.publish(f"pnp/devices/{a}/discovered", {**DISC, "mac": a}, retain=True)
    probe.publish(f"pnp/devices/{a}/assignment", ASSIGN, retain=True)
    probe.publish(f"pnp/devices/{a}/config", CONFIG, retain=True)
    probe.publish(f"pnp/devices/{a}/files", PUB, retain=True)
    probe.publish(f"pnp/devices/{a}/notify", NOTIFY_OK, retain=True)
    probe.publish(f"pnp/devices/{a}/fetched", {**FETCHED, "provisioned": True}, retain=True)
    probe.publish(f"pnp/devices/{b}/discovered", {**DISC, "mac": b, "vendor": "yealink", "model": "T46S"}, retain=True)
    probe.publish(f"pnp/devices/{c}/assignment", {**ASSIGN, "vendor": "snom"}, retain=True)
    probe.publish(f"pnp/devices/{c}/error", b"{not json", retain=True)
    probe.publish(f"pnp/devices/not-a-mac/discovered", DISC, retain=True)
    probe.publish("pnp/devices/000b82000009/discovered", DISC, retain=False)  # an event, not state

    result = _pnp(broker, "--json")
    assert result.returncode == 0, result.stderr
    rows = {d["mac"]: d for d in json.loads(result.stdout)}
    assert set(rows) == {a, b, c}
    assert rows[a]["stage"] == "provisioned" and rows[a]["ip"] == "127.0.0.2"
    assert (rows[b]["stage"], rows[b]["vendor"], rows[b]["model"]) == ("awaiting-assignment", "yealink", "T46S")
    assert rows[c]["stage"] == "error" and "not JSON" in rows[c]["detail"]

    result = _pnp(broker, "--stage", "error")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(c)
    assert "1 device(s): 1 error" in result.stderr

    assert _pnp(broker, "--stage", "bogus").returncode == 2

    probe.publish(f"pnp/devices/{a}/enrolment", {**ENROLLING, "state": "provisioned", "bound": "127.0.0.2"},
                  retain=True)
    probe.publish(f"pnp/devices/{b}/enrolment", {**ENROLLING, "state": "conflict",
                                                 "addresses": ["127.0.0.2", "127.0.0.9"]}, retain=True)
    result = _pnp(broker, "--enrolment", "conflict")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(b) and "conflict 127.0.0.2 and 127.0.0.9" in lines[1]
    assert "enrolment: 1 conflict" in result.stderr
    rows = {d["mac"]: d for d in json.loads(_pnp(broker, "--json").stdout)}
    assert rows[a]["enrolment"] == "provisioned" and rows[c]["enrolment"] == ""
    assert _pnp(broker, "--enrolment", "enroled").returncode == 2
