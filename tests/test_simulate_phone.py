"""The simulated phone's firmware, sans-I/O: values in, actions out, no sockets, explicit time."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from services.sip import message as sip
from tools.simulate.fleet import PlanError, plan
from tools.simulate.phone import Fetch, Phone, Send, State, Timing, check_digests
from tools.simulate.report import Report, percentile
from tools.simulate.vendors import UnknownModel, find_model

PORT = 45060
FAST = Timing(t1=0.5, notify_timeout=3.0, reboot_delay=0.2, jitter=0.0)


def make(model: str = "GRP2614", timing: Timing = FAST, check_files: bool = False) -> Phone:
    # Protocol tests serve placeholder bodies; reading real files is tested on its own below.
    ident = plan(1, [model], "127.0.0.7")[0]
    return Phone(ident, PORT, timing, random.Random(7), check_files=check_files)


def sent(actions: list) -> list[sip.Request | sip.Response]:
    return [sip.parse(a.data) for a in actions if isinstance(a, Send)]


def answer(request: sip.Request, status: int, reason: str = "OK") -> bytes:
    return sip.build_response(request, status, reason, to_tag="pbx1").to_bytes()


def notify(phone: Phone, body: bytes, ctype: str = "application/url", rport: bool = True,
           cseq: int = 1, via_port: int = 6060) -> bytes:
    h = sip.Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bKn{cseq}" + (";rport" if rport else ""))
    h.add("From", "<sip:127.0.0.1:6060>;tag=srv")
    h.add("To", f"<sip:{phone.ident.ip}:{phone.ident.port}>")
    h.add("Call-ID", "notify-1@127.0.0.1")
    h.add("CSeq", f"{cseq} NOTIFY")
    h.add("Event", "ua-profile")
    if ctype:
        h.add("Content-Type", ctype)
    return sip.Request("NOTIFY", f"sip:{phone.ident.ip}:{phone.ident.port}", h, body).to_bytes()


def file_headers(body: bytes, etag: str | None = None) -> dict[str, str]:
    digest = hashlib.sha256(body).digest()
    return {"etag": etag or f'"{digest.hex()}"',
            "repr-digest": "sha-256=:" + base64.b64encode(digest).decode() + ":"}


# --- what goes on the wire ---------------------------------------------------------------------


def test_grandstream_subscribe_has_the_guides_shape():
    phone = make("GRP2614")
    actions = phone.boot(0.0)
    assert [type(a) for a in actions] == [Send]
    assert actions[0].addr == ("224.0.1.75", PORT)
    req = sent(actions)[0]
    assert req.method == "SUBSCRIBE"
    assert req.uri == "sip:MAC%3A000B82000001@224.0.1.75"
    via = sip.parse_via(req.headers.get("via"))
    assert (via.host, via.port, "rport" in via.params) == ("127.0.0.7", 5080, True)
    assert via.branch.startswith("z9hG4bK")
    assert req.cseq == (20000, "SUBSCRIBE")
    assert req.headers.get("contact") == "<sip:127.0.0.7:5080>"
    assert req.headers.get("x-grandstream-pbx") == "true"
    assert req.headers.get("accept") == "application/url"
    assert req.headers.get("event") == (
        'ua-profile;profile-type="device";vendor="Grandstream";model="GRP2614";version="1.0.0.31"')
    # the guide's Call-ID writes the IP in letters: 127.0.0.7 -> BCH.A.A.H
    assert req.call_id.endswith("-5080-1@BCH.A.A.H")


def test_yealink_snom_and_fanvil_shapes():
    yealink = sent(make("T46S").boot(0.0))[0]
    assert yealink.uri == "sip:MAC001565000001@224.0.1.75"
    assert sip.parse_via(yealink.headers.get("via")).port == 5059
    assert 'vendor="Yealink";model="T46S"' in yealink.headers.get("event")

    snom = sent(make("D785").boot(0.0))[0]
    assert snom.uri == "sip:MAC%3a000413000001@intern.snom.de"
    via = sip.parse_via(snom.headers.get("via"))
    assert via.branch is None and "rport" in via.params and via.port == 5060
    assert 'vendor="OEM";model="snomD785"' in snom.headers.get("event")
    assert snom.headers.get("user-agent") is None

    fanvil = sent(make("X4U").boot(0.0))[0]
    assert fanvil.uri == "sip:MAC=0c383e000001@224.0.1.75"
    assert sip.parse_name_addr(fanvil.headers.get("from")).tag is None


def test_plan_gives_each_phone_its_own_loopback_address_and_vendor_port():
    idents = plan(300, ["GRP2614", "T46S", "snom"], "127.0.0.250")
    addrs = [i.ip for i in idents]
    assert len(set(addrs)) == 300
    assert "127.0.0.255" not in addrs and "127.0.1.0" not in addrs
    assert [i.port for i in idents[:3]] == [5080, 5059, 5060]
    assert len({i.mac for i in idents}) == 300
    with pytest.raises(PlanError):
        plan(2, ["GRP2614"], "127.255.255.254")
    with pytest.raises(PlanError):
        plan(1, ["GRP2614"], "10.0.0.2")
    with pytest.raises(UnknownModel, match="GRP2614"):
        find_model("nokia3310")


# --- SUBSCRIBE rules ---------------------------------------------------------------------------


def test_five_subscribes_with_doubling_gaps_then_gives_up():
    phone = make()
    times = [0.0]
    phone.boot(0.0)
    while not phone.done:
        now = phone.deadline
        if sent(phone.tick(now)):
            times.append(now)
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5]
    assert phone.state == State.FAILED and phone.step == "subscribe"
    assert "no 2xx to 5 SUBSCRIBEs" in phone.reason


def test_retransmissions_of_phones_booted_together_drift_apart():
    timing = Timing(t1=0.5, notify_timeout=3.0, jitter=0.1)
    seconds = []
    for seed in range(20):
        phone = Phone(plan(1, ["GRP2614"], "127.0.0.7")[0], PORT, timing, random.Random(seed))
        phone.boot(0.0)
        seconds.append(phone.deadline)
    assert all(0.45 <= s <= 0.55 for s in seconds)
    assert len(set(seconds)) == 20


def test_4xx_is_ignored_and_500_stops():
    phone = make()
    first = sent(phone.boot(0.0))[0]
    phone.receive(answer(first, 404, "Not Found"), ("127.0.0.1", PORT), 0.01)
    assert phone.state == State.SUBSCRIBING
    second = sent(phone.tick(0.5))[0]
    assert second.cseq[0] == 20001
    phone.receive(answer(second, 500, "Server Internal Error"), ("127.0.0.1", PORT), 0.51)
    assert phone.state == State.FAILED and phone.step == "subscribe"
    assert phone.reason == "500 Server Internal Error"
    assert phone.answers == [404, 500]


def test_2xx_stops_the_subscribes_and_a_notify_without_url_gets_4xx():
    phone = make()
    req = sent(phone.boot(0.0))[0]
    phone.receive(answer(req, 202, "Accepted"), ("127.0.0.1", PORT), 0.002)
    assert phone.state == State.WAITING_NOTIFY and phone.times.answer == 0.002
    assert phone.deadline == pytest.approx(3.002)
    assert phone.tick(0.5) == []  # not due: no SUBSCRIBE goes out after the 2xx

    out = phone.receive(notify(phone, b"http://x/", ctype="text/plain"), ("127.0.0.1", 40000), 0.01)
    assert [r.status for r in sent(out)] == [415]
    out = phone.receive(notify(phone, b"not a url", cseq=2), ("127.0.0.1", 40000), 0.01)
    assert [r.status for r in sent(out)] == [400]
    assert phone.state == State.WAITING_NOTIFY

    phone.tick(3.002)
    assert phone.state == State.FAILED and phone.step == "notify"


def test_notify_answer_goes_to_rport_or_via_port_and_the_fetch_follows():
    phone = make()
    phone.boot(0.0)
    out = phone.receive(notify(phone, b"http://127.0.0.1:8080/p/tok/", rport=False, via_port=6060),
                        ("127.0.0.1", 40000), 0.004)
    response, fetch = out
    assert response.addr == ("127.0.0.1", 6060)  # no rport: the Via's port
    resp = sip.parse(response.data)
    assert resp.status == 200 and resp.cseq == (1, "NOTIFY")
    assert sip.parse_name_addr(resp.headers.get("to")).tag  # a To tag on the answer
    assert fetch == Fetch("http://127.0.0.1:8080/p/tok/cfg000b82000001.xml", fetch.headers)
    assert fetch.headers["User-Agent"] == "Grandstream Model HW GRP2614 SW 1.0.0.31 DevId 000b82000001"
    assert phone.times.notify == 0.004 and phone.notify_in_dialog is False

    # a retransmitted NOTIFY gets the same answer, sent where rport says, and no second fetch
    again = phone.receive(notify(phone, b"http://127.0.0.1:8080/p/tok/", rport=False), ("127.0.0.1", 40000), 0.5)
    assert [type(a) for a in again] == [Send] and again[0].data == response.data


def test_a_notify_that_overtakes_the_answer_is_taken_and_the_answer_still_timed():
    phone = make()
    req = sent(phone.boot(0.0))[0]
    out = phone.receive(notify(phone, b"http://127.0.0.1:8080/p/tok/"), ("127.0.0.1", 40000), 0.003)
    assert isinstance(out[1], Fetch) and phone.deadline is None  # no more SUBSCRIBEs
    phone.receive(answer(req, 200), ("127.0.0.1", PORT), 0.004)
    assert phone.state == State.FETCHING and phone.times.answer == 0.004


def test_yealink_fetches_the_url_itself_and_rport_answer_goes_to_the_source():
    phone = make("T46S")
    phone.boot(0.0)
    out = phone.receive(notify(phone, b"http://127.0.0.1:8080/p/tok/001565000001.cfg"), ("127.0.0.1", 40001), 0.01)
    assert out[0].addr == ("127.0.0.1", 40001)
    assert out[1].url == "http://127.0.0.1:8080/p/tok/001565000001.cfg"
    assert out[1].headers["User-Agent"] == "Yealink SIP-T46S 66.86.0.15 00:15:65:00:00:01"


def _to_fetching(phone: Phone) -> Fetch:
    phone.boot(0.0)
    out = phone.receive(notify(phone, b"http://127.0.0.1:8080/p/tok/"), ("127.0.0.1", 40000), 0.01)
    return out[1]


def test_provisioned_after_reboot_with_304_and_times_recorded():
    phone = make()
    _to_fetching(phone)
    body = b"<gs_provision/>"
    assert phone.http_response(200, file_headers(body), body, 0.02) == []
    assert phone.state == State.REBOOTING and phone.times.file == 0.02
    (refetch,) = phone.tick(0.22)
    assert refetch.headers["If-None-Match"] == f'"{hashlib.sha256(body).hexdigest()}"'
    phone.http_response(304, {}, b"", 0.23)
    assert phone.state == State.PROVISIONED
    assert phone.times.span("boot", "provisioned") == pytest.approx(0.23)
    assert phone.times.span("notify", "file") == pytest.approx(0.01)


def test_check_sync_makes_a_provisioned_phone_fetch_flash_and_check_again():
    phone = make()
    _to_fetching(phone)
    phone.http_response(200, file_headers(b"v1"), b"v1", 0.02)
    phone.tick(0.22)
    phone.http_response(304, {}, b"", 0.23)
    h = sip.Headers([("Via", "SIP/2.0/UDP 127.0.0.1:6060;branch=z9hG4bKcs;rport"),
                     ("From", "<sip:127.0.0.1:6060>;tag=s"), ("To", "<sip:127.0.0.7:5080>"),
                     ("Call-ID", "cs1"), ("CSeq", "1 NOTIFY"), ("Event", "check-sync;reboot=true")])
    out = phone.receive(sip.Request("NOTIFY", "sip:127.0.0.7:5080", h).to_bytes(), ("127.0.0.1", 6060), 5.0)
    assert sip.parse(out[0].data).status == 200
    assert out[1].url.endswith("cfg000b82000001.xml") and "If-None-Match" not in out[1].headers
    phone.http_response(200, file_headers(b"v2"), b"v2", 5.01)  # the new configuration
    phone.tick(5.21)
    phone.http_response(304, {}, b"", 5.22)
    assert phone.state == State.PROVISIONED and phone.resyncs == 1
    assert (phone.times.provisioned, phone.times.resynced) == (0.23, 5.22)


def test_same_bytes_after_reboot_also_provision():
    phone = make()
    _to_fetching(phone)
    body = b"config"
    phone.http_response(200, file_headers(body), body, 0.02)
    phone.tick(0.22)
    phone.http_response(200, file_headers(body), body, 0.23)
    assert phone.state == State.PROVISIONED


def test_bad_checksums_and_changed_files_fail_with_the_step():
    phone = make()
    _to_fetching(phone)
    phone.http_response(200, file_headers(b"a", etag='"' + "0" * 64 + '"'), b"a", 0.02)
    assert (phone.state, phone.step) == (State.FAILED, "verify")
    assert "ETag" in phone.reason

    phone = make()
    _to_fetching(phone)
    phone.http_response(200, file_headers(b"one"), b"one", 0.02)
    phone.tick(0.22)
    phone.http_response(200, file_headers(b"two"), b"two", 0.23)
    assert (phone.state, phone.step) == (State.FAILED, "refetch")
    assert "changed after reboot" in phone.reason

    phone = make()
    _to_fetching(phone)
    phone.http_response(404, {}, b"", 0.02)
    assert (phone.step, phone.reason) == ("fetch", "GET cfg000b82000001.xml: HTTP 404")



def test_connection_failures_and_5xx_are_retried_then_reported():
    phone = make()
    _to_fetching(phone)
    assert phone.http_error("connection refused", 0.02) == []
    assert phone.deadline == pytest.approx(2.02)  # retry after 2 s, then 4 s
    (again,) = phone.tick(2.02)
    assert again.url.endswith("cfg000b82000001.xml")
    phone.http_response(503, {}, b"", 2.1)
    assert phone.deadline == pytest.approx(6.1)
    phone.tick(6.1)
    phone.http_error("timed out", 6.2)
    assert (phone.step, phone.reason) == ("fetch", "GET cfg000b82000001.xml: timed out (after 2 retries)")
    assert phone.fetch_errors == ["connection refused", "timed out"]

    phone = make()
    _to_fetching(phone)
    phone.http_error("connection refused", 0.02)
    phone.tick(2.02)
    body = b"ok"
    phone.http_response(200, file_headers(body), body, 2.05)  # the retry worked
    assert phone.state == State.REBOOTING


def test_check_digests():
    body = b"x"
    good = file_headers(body)
    digest = hashlib.sha256(body).hexdigest()
    assert check_digests(good, digest) is None
    assert check_digests({"etag": good["etag"]}, digest) is None
    assert check_digests({"etag": "W/" + good["etag"]}, digest) is None
    assert "no ETag" in check_digests({}, digest)
    assert "Repr-Digest" in check_digests({"repr-digest": "sha-256=:AAAA:"}, digest)


def test_garbage_and_strangers_never_break_the_phone():
    phone = make()
    phone.boot(0.0)
    for junk in (b"", b"\x00\xff" * 50, b"SIP/2.0 200 OK\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        assert phone.receive(junk, ("127.0.0.1", 1), 0.1) == []
    assert phone.garbage == 4
    # a response for someone else's Call-ID is not our answer
    other = Phone(plan(1, ["GRP2614"], "127.0.0.8")[0], PORT, FAST, random.Random(8))
    req = sent(other.boot(0.0))[0]
    phone.receive(answer(req, 200), ("127.0.0.1", PORT), 0.1)
    assert phone.state == State.SUBSCRIBING
    # an OPTIONS is answered, not obeyed
    h = sip.Headers([("Via", "SIP/2.0/UDP 127.0.0.1:1;rport"), ("From", "<sip:a@b>;tag=1"),
                     ("To", "<sip:c@d>"), ("Call-ID", "o1"), ("CSeq", "1 OPTIONS")])
    out = phone.receive(sip.Request("OPTIONS", "sip:x@y", h).to_bytes(), ("127.0.0.1", 1), 0.1)
    assert [r.status for r in sent(out)] == [501]


# --- the report's maths ------------------------------------------------------------------------


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0


def test_report_counts_failures_by_step_and_throughput():
    ok = make()
    _to_fetching(ok)
    ok.http_response(200, file_headers(b"c"), b"c", 0.02)
    ok.tick(0.22)
    ok.http_response(304, {}, b"", 0.25)
    bad = make("T46S")
    bad.boot(0.0)
    bad.fail(0.3, "bind", "cannot bind")
    report = Report.of([ok, bad], 0.0, 1.0)
    data = report.to_dict()
    assert (data["total"], data["provisioned"], data["failed"]) == (2, 1, 1)
    assert data["failures_by_step"] == {"bind": 1}
    assert data["failures"][0]["reason"] == "cannot bind"
    assert data["provisioning_time_s"] == 0.25 and data["throughput_per_s"] == 4.0
    assert data["latency_ms"]["boot_to_provisioned"]["p50"] == 250.0
    assert "FAILED 001565000001 yealink T46S" in report.text()
    assert not report.ok


def test_a_401_is_answered_once_with_basic_or_digest():
    from fileserver.auth import Authenticator

    for scheme in ("basic", "digest"):
        auth = Authenticator(scheme, "phone", "pw")
        phone = Phone(plan(1, ["GRP2614"], "127.0.0.7")[0], PORT, FAST, random.Random(1),
                      credentials=("phone", "pw"))
        first = _to_fetching(phone)
        assert "Authorization" not in first.headers
        (retry,) = phone.http_response(401, {"www-authenticate": auth.challenge("127.0.0.7")}, b"", 0.02)
        path = b"/p/tok/cfg000b82000001.xml"
        assert auth.check(retry.headers["Authorization"].encode(), b"GET", path, "127.0.0.7"), scheme
        phone.http_response(401, {"www-authenticate": auth.challenge("127.0.0.7")}, b"", 0.03)
        assert (phone.step, phone.reason) == ("fetch", "GET cfg000b82000001.xml: HTTP 401")


def test_credentials_in_the_notify_url_are_used_for_the_challenge_not_sent_in_it():
    phone = make()
    phone.boot(0.0)
    out = phone.receive(notify(phone, b"http://ph%40ne:s3c@127.0.0.1:8080/p/tok/"), ("127.0.0.1", 1), 0.01)
    assert out[1].url == "http://127.0.0.1:8080/p/tok/cfg000b82000001.xml"
    assert phone.credentials == ("ph@ne", "s3c")


def _provisioned(notify_auth=None) -> Phone:
    ident = plan(1, ["GRP2614"], "127.0.0.7")[0]
    phone = Phone(ident, PORT, FAST, random.Random(7), notify_auth=notify_auth, check_files=False)
    _to_fetching(phone)
    phone.http_response(200, file_headers(b"v1"), b"v1", 0.02)
    phone.tick(0.22)
    phone.http_response(304, {}, b"", 0.23)
    assert phone.state == State.PROVISIONED
    return phone


def _check_sync(cseq: int, authorization: str | None = None) -> sip.Request:
    h = sip.Headers([("Via", f"SIP/2.0/UDP 127.0.0.1:6060;branch=z9hG4bKcs{cseq};rport"),
                     ("From", "<sip:127.0.0.1:6060>;tag=s"), ("To", "<sip:127.0.0.7:5080>"),
                     ("Call-ID", "cs1"), ("CSeq", f"{cseq} NOTIFY"), ("Event", "check-sync;reboot=false")])
    if authorization:
        h.add("Authorization", authorization)
    return sip.Request("NOTIFY", "sip:127.0.0.7:5080", h)


def test_a_phone_with_notify_auth_challenges_a_resync_and_takes_only_its_own_password():
    from services.sip import digest

    phone = _provisioned(notify_auth=("1001", "s3cret"))
    first = sip.parse(phone.receive(_check_sync(1).to_bytes(), ("127.0.0.1", 6060), 5.0)[0].data)
    assert first.status == 401 and phone.state == State.PROVISIONED and phone.resyncs == 0
    # a wrong password: challenged again, nothing fetched
    wrong = digest.retry_request(_check_sync(1), first, "1001", "guess", 2, "z9hG4bKw", "c1")
    out = phone.receive(wrong.to_bytes(), ("127.0.0.1", 6060), 5.1)
    second = sip.parse(out[0].data)
    assert second.status == 401 and len(out) == 1 and phone.auth_failures == 1
    # the account's credentials, answering the newest challenge: 200 and the resync starts
    right = digest.retry_request(_check_sync(2), second, "1001", "s3cret", 3, "z9hG4bKr", "c2")
    out = phone.receive(right.to_bytes(), ("127.0.0.1", 6060), 5.2)
    assert sip.parse(out[0].data).status == 200 and isinstance(out[1], Fetch)
    assert (phone.resyncs, phone.challenges) == (1, 2)
    # the same answer again is a retransmission (same CSeq): the same 200, no second resync
    again = phone.receive(right.to_bytes(), ("127.0.0.1", 6060), 5.3)
    assert sip.parse(again[0].data).status == 200 and phone.resyncs == 1


def test_a_replayed_answer_to_an_old_challenge_is_refused():
    from services.sip import digest

    phone = _provisioned(notify_auth=("1001", "s3cret"))
    challenge = sip.parse(phone.receive(_check_sync(1).to_bytes(), ("127.0.0.1", 6060), 5.0)[0].data)
    answer = digest.retry_request(_check_sync(1), challenge, "1001", "s3cret", 2, "z9hG4bKa", "c")
    assert sip.parse(phone.receive(answer.to_bytes(), ("127.0.0.1", 6060), 5.1)[0].data).status == 200
    # an eavesdropper replays it with a new CSeq: the nonce was used, so a new challenge
    replay = sip.Request(answer.method, answer.uri, answer.headers.copy(), b"")
    replay.headers.set("CSeq", "9 NOTIFY")
    assert sip.parse(phone.receive(replay.to_bytes(), ("127.0.0.1", 6060), 5.2)[0].data).status == 401


def test_a_grp_takes_its_notify_credentials_from_the_file_it_fetched():
    from tools.simulate.phone import grandstream_notify_auth

    gs = (b'<?xml version="1.0" encoding="UTF-8"?><gs_provision version="1"><mac>000b82000001</mac>'
          b"<config version=\"1\"><P35>1001</P35><P36>auth1001</P36><P34>s3&amp;cret</P34></config></gs_provision>")
    assert grandstream_notify_auth(gs) == ("auth1001", "s3&cret")
    assert grandstream_notify_auth(gs.replace(b"<P36>auth1001</P36>", b"")) == ("1001", "s3&cret")
    assert grandstream_notify_auth(gs.replace(b"</config>", b"<P4428>1</P4428></config>")) is None
    assert grandstream_notify_auth(b"<gs_provision><config/></gs_provision>") is None
    assert grandstream_notify_auth(b"not xml <") is None
    # a factory GRP knows no account; once provisioned it challenges a resync with the file's
    phone = make()
    assert phone.notify_auth is None
    _to_fetching(phone)
    phone.http_response(200, file_headers(gs), gs, 0.02)
    assert phone.notify_auth == ("auth1001", "s3&cret")
    phone.tick(0.22)
    phone.http_response(304, {}, b"", 0.23)
    out = phone.receive(_check_sync(1).to_bytes(), ("127.0.0.1", 6060), 5.0)
    assert sip.parse(out[0].data).status == 401
    # other vendors do not challenge
    yealink = make("T46S")
    assert not yealink.learns_notify_auth


def _notify_url(phone: Phone, url: str) -> None:
    phone.boot(0.0)
    (sub,) = sent(phone.tick(phone.deadline))
    phone.receive(answer(sub, 200), ("127.0.0.1", PORT), 0.01)
    h = sip.Headers()
    for name, value in (("Via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx"), ("From", "<sip:a@b>;tag=1"),
                        ("To", f"<sip:{phone.mac}@127.0.0.7>"), ("Call-ID", "c1"), ("CSeq", "1 NOTIFY"),
                        ("Event", "ua-profile"), ("Content-Type", "application/url")):
        h.add(name, value)
    phone.receive(sip.Request("NOTIFY", "sip:x", h, url.encode()).to_bytes(), ("127.0.0.1", 5999), 0.02)


def test_phone_applies_a_generated_file_and_refuses_a_broken_one():
    from generator.render import Renderer

    good = make("GRP2614", check_files=True)
    _notify_url(good, "http://127.0.0.1:8080/p/")
    body = Renderer().render(good.mac, "grandstream", "GRP2614", "1", {
        "accounts": [{"sip_server": "pbx", "user_id": "1"}],
        "keys": [{"type": "blf", "value": "2"}]}).files[0].body
    assert good.state == State.FETCHING
    good.http_response(200, file_headers(body), body, 0.03)
    assert good.state == State.REBOOTING and ("P1363", "1") in good.applied[f"cfg{good.mac}.xml"]
    bad = make("GRP2614", check_files=True)
    _notify_url(bad, "http://127.0.0.1:8080/p/")
    broken = body.replace(b"<P323>-1<", b"<P323>40<")  # MPK 1 mode out of the template's range
    bad.http_response(200, file_headers(broken), broken, 0.03)
    assert bad.state == State.FAILED and bad.step == "apply" and "P323" in bad.reason


def test_yealink_phone_fetches_its_models_common_file_from_a_directory_url():
    phone = make("T48S", check_files=True)
    _notify_url(phone, "http://127.0.0.1:8080/p/")
    assert [u.rsplit("/", 1)[1] for u in phone._urls] == ["y000000000065.cfg", f"{phone.mac}.cfg"]
