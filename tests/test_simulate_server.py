"""Simulated phones follow the configuration server their file sets: after the Plug and Play
download they "reboot" and fetch from that server, answering its Digest challenge with the HTTP
user and password the file gave them (each vendor's own settings), as the firmware would. A
server that answers 404 there (a fileserver without the credentialed route) is a failure at step
``refetch``, not a crash. Sans-I/O first, then over real HTTP against a server that demands Digest."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.trial import unittest as trial
from twisted.web import resource, server

from fileserver.auth import Authenticator
from generator.render import Renderer
from generator.vendors import ConfigServer
from tools.simulate.fleet import plan
from tools.simulate.phone import Fetch, Phone, State, Timing
from tools.simulate.vendors import file_names

FAST = Timing(t1=0.5, notify_timeout=3.0, reboot_delay=0.2, jitter=0.0)
ACCOUNT = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}
MODELS = {"grandstream": "GRP2614", "yealink": "T46S", "snom": "D785", "fanvil": "X4U"}


def phone_for(model: str, ip: str = "127.0.0.7") -> Phone:
    return Phone(plan(1, [model], ip)[0], 45060, FAST, random.Random(3), check_files=True)


def files_for(phone: Phone, base: str, password: str) -> dict[str, bytes]:
    rendered = Renderer().render(phone.mac, phone.vendor.name, phone.ident.model, "1", ACCOUNT,
                                 ConfigServer(base + "c/", phone.mac, password))
    return {f.name: f.body for f in rendered.files}


def headers_of(body: bytes) -> dict[str, str]:
    digest = hashlib.sha256(body).digest()
    return {"etag": f'"{digest.hex()}"', "repr-digest": "sha-256=:" + base64.b64encode(digest).decode() + ":"}


def notified(phone: Phone, url: str) -> list[Any]:
    """Boot the phone and hand it a ua-profile NOTIFY carrying ``url``; its first Fetch back."""
    from services.sip import message as sip

    phone.boot(0.0)
    h = sip.Headers()
    for name, value in (("Via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx;rport"), ("From", "<sip:a@b>;tag=1"),
                        ("To", f"<sip:{phone.mac}@127.0.0.7>"), ("Call-ID", "c1"), ("CSeq", "1 NOTIFY"),
                        ("Event", "ua-profile"), ("Content-Type", "application/url")):
        h.add(name, value)
    out = phone.receive(sip.Request("NOTIFY", "sip:x", h, url.encode()).to_bytes(), ("127.0.0.1", 5999), 0.01)
    return [a for a in out if isinstance(a, Fetch)]


class DigestSite:
    """The credentialed route, sans-I/O: 401 with a Digest challenge unless the Authorization
    proves the device's password (checked by twisted.cred, as the fileserver does)."""

    def __init__(self, user: str, password: str, files: dict[str, bytes], status: int = 200) -> None:
        self.auth = Authenticator("digest", user, password)
        self.files = files
        self.status = status
        self.asked: list[tuple[str, bool]] = []  # (path, with credentials)

    def answer(self, fetch: Fetch) -> tuple[int, dict[str, str], bytes]:
        path = "/" + fetch.url.split("/", 3)[3]
        given = fetch.headers.get("Authorization")
        self.asked.append((path, given is not None))
        if self.status != 200:
            return self.status, {}, b""
        if not self.auth.check(given.encode() if given else None, b"GET", path.encode(), "127.0.0.7"):
            return 401, {"www-authenticate": self.auth.challenge("127.0.0.7")}, b""
        body = self.files[path.rsplit("/", 1)[1]]
        return 200, headers_of(body), body


def run(phone: Phone, actions: list[Any], site: DigestSite, now: float) -> float:
    """Serve the phone's fetches from ``site`` (and its reboot timer) until it settles."""
    while True:
        fetches = [a for a in actions if isinstance(a, Fetch)]
        if fetches:
            now += 0.01
            status, headers, body = site.answer(fetches[0])
            actions = phone.http_response(status, headers, body, now)
        elif phone.deadline is not None and phone.state == State.REBOOTING:
            now = phone.deadline
            actions = phone.tick(now)
        else:
            return now


def bootstrap(phone: Phone, files: dict[str, bytes]) -> float:
    """The Plug and Play download from the bootstrap directory (no credentials needed there)."""
    (first,) = notified(phone, "http://127.0.0.1:8080/p/tok/")
    actions: list[Any] = [first]
    now = 0.01
    while actions:
        fetch = actions[0]
        now += 0.01
        body = files[fetch.url.rsplit("/", 1)[1]]
        actions = [a for a in phone.http_response(200, headers_of(body), body, now) if isinstance(a, Fetch)]
    assert phone.state == State.REBOOTING, phone.reason
    return now


@pytest.mark.parametrize("vendor", list(MODELS))
def test_the_reboot_download_comes_from_the_files_server_with_digest(vendor: str) -> None:
    phone = phone_for(MODELS[vendor])
    password = "Pw_" + vendor * 4
    files = files_for(phone, "http://127.0.0.1:8080/", password)
    now = bootstrap(phone, files)
    assert phone.server is not None and phone.credentials == (phone.mac, password)
    site = DigestSite(phone.mac, password, files)
    run(phone, phone.tick(now + 1), site, now + 1)
    assert phone.state == State.PROVISIONED, phone.reason
    names = file_names(phone.vendor, phone.mac, phone.ident.model)
    # each file: asked without credentials, challenged, asked again with them
    assert site.asked == [p for n in names for p in ((f"/c/{n}", False), (f"/c/{n}", True))]


def test_a_wrong_password_is_a_refetch_failure_naming_the_401() -> None:
    phone = phone_for("GRP2614")
    files = files_for(phone, "http://127.0.0.1:8080/", "right-password-0123456789")
    now = bootstrap(phone, files)
    run(phone, phone.tick(now + 1), DigestSite(phone.mac, "another-password-0123456789", files), now + 1)
    assert (phone.state, phone.step) == (State.FAILED, "refetch")
    assert phone.reason == f"GET cfg{phone.mac}.xml: HTTP 401"


def test_a_fileserver_without_the_credentialed_route_is_a_failure_not_a_crash() -> None:
    phone = phone_for("T46S")
    files = files_for(phone, "http://127.0.0.1:8080/", "password-0123456789abcdef")
    now = bootstrap(phone, files)
    run(phone, phone.tick(now + 1), DigestSite(phone.mac, "x", files, status=404), now + 1)
    assert (phone.state, phone.step) == (State.FAILED, "refetch")
    assert phone.reason == "GET y000000000066.cfg: HTTP 404"


def test_a_file_without_a_server_is_fetched_again_from_the_notify_url() -> None:
    phone = phone_for("GRP2614")
    body = Renderer().render(phone.mac, "grandstream", "GRP2614", "1", ACCOUNT).files[0].body
    now = bootstrap(phone, {f"cfg{phone.mac}.xml": body})
    assert phone.server is None
    (refetch,) = phone.tick(now + 1)
    assert refetch.url == f"http://127.0.0.1:8080/p/tok/cfg{phone.mac}.xml"


def test_a_yealink_told_its_own_file_fetches_both_files_from_the_server() -> None:
    """The NOTIFY names the per-phone file only; the server it sets is a directory, where the
    phone then also finds its model's common file, which it applies as new."""
    phone = phone_for("T46S")
    files = files_for(phone, "http://127.0.0.1:8080/", "password-0123456789abcdef")
    (first,) = notified(phone, f"http://127.0.0.1:8080/p/tok/{phone.mac}.cfg")
    body = files[f"{phone.mac}.cfg"]
    assert phone.http_response(200, headers_of(body), body, 0.02) == []
    run(phone, phone.tick(1.0), DigestSite(phone.mac, "password-0123456789abcdef", files), 1.0)
    assert phone.state == State.PROVISIONED, phone.reason
    assert set(phone.applied) == {"y000000000066.cfg", f"{phone.mac}.cfg"}


def test_a_resync_after_rotation_fetches_with_the_old_password_then_reboots_with_the_new() -> None:
    from services.sip import message as sip

    phone = phone_for("T46S")  # a GRP would challenge the check-sync first (tests/test_simulate_phone.py)
    old, new = "old-password-0123456789ab", "new-password-0123456789ab"
    files = files_for(phone, "http://127.0.0.1:8080/", old)
    now = bootstrap(phone, files)
    now = run(phone, phone.tick(now + 1), DigestSite(phone.mac, old, files), now + 1)
    assert phone.state == State.PROVISIONED
    rotated = files_for(phone, "http://127.0.0.1:8080/", new)
    h = sip.Headers([("Via", "SIP/2.0/UDP 127.0.0.1:6060;branch=z9hG4bKcs;rport"),
                     ("From", "<sip:127.0.0.1:6060>;tag=s"), ("To", "<sip:127.0.0.7:5059>"),
                     ("Call-ID", "cs1"), ("CSeq", "1 NOTIFY"), ("Event", "check-sync")])
    out = phone.receive(sip.Request("NOTIFY", "sip:127.0.0.7:5059", h).to_bytes(), ("127.0.0.1", 6060), now + 1)
    # the server accepts the old password until the new file is fetched, then only the new one
    site = DigestSite(phone.mac, old, rotated)
    fetch = [a for a in out if isinstance(a, Fetch)]
    assert fetch and fetch[0].url.startswith("http://127.0.0.1:8080/c/")
    while fetch:  # the download, without the reboot
        status, headers, body = site.answer(fetch[0])
        fetch = [a for a in phone.http_response(status, headers, body, now + 1) if isinstance(a, Fetch)]
    assert phone.state == State.REBOOTING and phone.credentials == (phone.mac, new)
    run(phone, phone.tick(now + 1), DigestSite(phone.mac, new, rotated), now + 1)
    assert phone.state == State.PROVISIONED and phone.times.resynced is not None


class _DigestFiles(resource.Resource):
    isLeaf = True

    def __init__(self, auth: Authenticator, files: dict[str, bytes]) -> None:
        super().__init__()
        self.auth, self.files, self.asked = auth, files, []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append(request.uri.decode())
        client = request.getClientAddress().host
        if not self.auth.check(request.getHeader(b"authorization"), b"GET", request.uri, client):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", self.auth.challenge(client).encode())
            return b""
        name = request.uri.decode().rsplit("/", 1)[1]
        if not request.uri.startswith(b"/c/") or name not in self.files:
            request.setResponseCode(404)
            return b""
        body = self.files[name]
        for key, value in headers_of(body).items():
            request.setHeader(key.encode(), value.encode())
        return body


class RealHttpTest(trial.TestCase):
    """The same second download over real HTTP (loopback), through the simulator's own client."""

    @defer.inlineCallbacks
    def test_digest_second_download_over_http(self) -> Any:
        from tools.simulate.http import get

        phone = phone_for("D785")
        password = "real-http-password-0123456789"
        site = _DigestFiles(Authenticator("digest", phone.mac, password), {})
        port = _reactor.listenTCP(0, server.Site(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/"
        files = files_for(phone, base, password)
        site.files = files
        now = bootstrap(phone, files)
        actions = phone.tick(now + 1)
        while actions:
            (fetch,) = actions
            d: defer.Deferred = defer.Deferred()
            get(_reactor, fetch.url, fetch.headers, phone.ident.ip, 5.0, lambda r, e: d.callback((r, e)))
            response, error = yield d
            self.assertIsNone(error)
            actions = phone.http_response(response.status, response.headers, response.body, now + 2)
        self.assertEqual(phone.state, State.PROVISIONED, phone.reason)
        self.assertEqual(site.asked, [f"/c/{phone.mac}.xml"] * 2)
