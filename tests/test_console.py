"""The console: its sans-I/O core (table, stages, filters, the form, users, sessions, what a
role may see), then the real service over real HTTP against a private mosquitto."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from console import forms
from console.redact import MASK, cut_urls, mask, secrets_in
from console.sessions import FAILURES_ALLOWED, SESSION_IDLE, Sessions, check_csrf
from console.table import STAGES, DeviceTable, Filter
from console.users import hash_password, parse_users, verify_password
from services.broker import free_port
from services.messages import encode_json
from tests.support import Probe, wait_until

ROOT = Path(__file__).resolve().parent.parent
MAC = "000b82f55284"
T0 = "2026-11-27T02:49:32.678Z"


def discovered(mac: str = MAC, at: str = T0, vendor: str = "grandstream", ip: str = "127.0.0.2") -> dict:
    return {"mac": mac, "vendor": vendor, "model": "GRP2614", "firmware": "1.0.0.31", "ip": ip,
            "port": 5080, "seen_at": at, "boot": 1, "v": 1}


ASSIGNMENT = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret-pw",
                            "display_name": "Alice"}]}
CONFIG = {"files": [{"name": f"cfg{MAC}.xml", "content_type": "application/xml",
                     "content": "<gs_provision><P34>s3cret-pw</P34><P35>1001</P35></gs_provision>",
                     "encoding": "utf-8", "sha256": "ab" * 32, "size": 64}],
          "revision": 1, "template": "grandstream/grp26xx", "mac": MAC, "vendor": "grandstream",
          "model": "GRP2614", "notify_path": "", "v": 1}
WORKING_URL = "http://127.0.0.1:8080/p/SECRETPATHTOKEN/"
# devices/{mac}/files: no URL; what the console's login reads under the deployment ACL
FILES = {"revision": 1, "mac": MAC, "vendor": "grandstream",
         "files": [{"name": f"cfg{MAC}.xml", "sha256": "ab" * 32, "size": 64}], "v": 1}
# devices/{mac}/published: the working URLs, which reach the console only on a broker without ACL
PUBLISHED = {"url": WORKING_URL, "revision": 1, "mac": MAC, "vendor": "grandstream",
             "files": [{"name": f"cfg{MAC}.xml", "url": WORKING_URL + f"cfg{MAC}.xml", "sha256": "ab" * 32}],
             "v": 1}

# devices/{mac}/resync: account 1's SIP password, for the notifier only
RESYNC = {"revision": 1, "username": "1001", "password": "s3cret-pw", "mac": MAC, "v": 1}


# --- the table -----------------------------------------------------------------------------------


def test_a_device_moves_through_the_stages_and_keeps_a_timeline():
    t = DeviceTable()
    t.on_device(MAC, "discovered", discovered(), True, "now")
    assert t.device(MAC).stage == "awaiting-assignment"
    t.on_device(MAC, "assignment", ASSIGNMENT, False, "2026-11-27T02:50:00.000Z")
    t.on_device(MAC, "config", CONFIG, False, "2026-11-27T02:50:00.100Z")
    t.on_device(MAC, "files", FILES, False, "2026-11-27T02:50:00.200Z")
    assert t.device(MAC).stage == "published"
    t.on_device(MAC, "notify", {"status": "accepted", "code": 200, "revision": 1, "at": "2026-11-27T02:50:01.000Z"},
                False, "x")
    t.on_device(MAC, "fetched", {"file": f"cfg{MAC}.xml", "sha256": "ab" * 32, "status": 200, "revision": 1,
                                 "provisioned": True, "at": "2026-11-27T02:50:09.000Z"}, False, "x")
    assert t.device(MAC).stage == "provisioned"
    events = t.timeline(MAC)
    assert [e.kind for e in events] == ["discovered", "assignment", "config", "files", "notify", "fetched"]
    assert events[0].at == T0 and events[0].retained  # the SUBSCRIBE's own time
    assert events[1].at == "2026-11-27T02:50:00.000Z"  # no time in the payload: when it arrived
    assert events[-1].sha256 == "ab" * 32 and "PROVISIONED" in events[-1].text
    assert "s3cret" not in " ".join(e.text for e in events)
    # An error wins; resolving it gives the stage back.
    t.on_device(MAC, "error", {"service": "generator", "code": "schema", "message": "bad"}, False, "x")
    assert t.device(MAC).stage == "error"
    t.on_device(MAC, "error", None, False, "x")
    assert t.device(MAC).stage == "provisioned"


def test_a_device_whose_every_topic_is_cleared_leaves_the_list():
    t = DeviceTable()
    t.on_device(MAC, "assignment", ASSIGNMENT, True, "x")
    assert t.device(MAC).stage == "assigned"
    t.on_device(MAC, "assignment", None, False, "x")
    assert t.device(MAC) is None and MAC not in t.devices
    assert t.on_device("000b82000001", "error", None, False, "x") is False  # never known: nothing


def test_waiting_phones_come_first_newest_first_then_errors_then_the_rest():
    t = DeviceTable()
    t.on_device("000000000001", "discovered", discovered("000000000001", "2026-01-01T00:00:01.000Z"), True, "x")
    t.on_device("000000000002", "discovered", discovered("000000000002", "2026-01-01T00:00:03.000Z"), True, "x")
    t.on_device("000000000003", "assignment", ASSIGNMENT, True, "x")
    t.on_device("000000000004", "error", {"service": "generator", "message": "m", "at": "2026-01-01T00:00:00.000Z"},
                True, "x")
    assert [d.mac for d in t.rows()] == ["000000000002", "000000000001", "000000000004", "000000000003"]


def test_filters_by_stage_vendor_and_text():
    t = DeviceTable()
    t.on_device("000b82000001", "discovered", discovered("000b82000001", vendor="grandstream", ip="10.0.0.7"), True, "x")
    t.on_device("001565000002", "discovered", discovered("001565000002", vendor="yealink"), True, "x")
    t.on_device("001565000002", "assignment", ASSIGNMENT, True, "x")
    assert [d.mac for d in t.rows(Filter(stage="discovered"))] == ["001565000002"]
    assert [d.mac for d in t.rows(Filter(vendor="Grandstream"))] == ["000b82000001"]
    assert [d.mac for d in t.rows(Filter(text="00:15:65"))] == ["001565000002"]
    assert [d.mac for d in t.rows(Filter(text="10.0.0.7"))] == ["000b82000001"]
    assert t.rows(Filter(text="nothing-like-it")) == []
    assert t.vendors() == ["grandstream", "yealink"]
    assert "awaiting-assignment" in STAGES and "provisioned" in STAGES


def test_an_unreadable_payload_is_shown_not_fatal():
    t = DeviceTable()
    assert t.on_device(MAC, "notify", {"_error": "not JSON"}, False, "x")
    assert t.on_device(MAC, "discovered", ["not", "an", "object"], False, "x")
    assert t.device(MAC) is not None and len(t.timeline(MAC)) == 2


def test_payloads_as_they_came_are_read_when_shown_and_a_bad_one_is_said_so():
    t = DeviceTable()
    assert t.on_raw(MAC, "discovered", encode_json(discovered()), True, "2026-11-27T02:50:00.000Z")
    assert t.device(MAC).stage == "awaiting-assignment"
    assert t.on_raw(MAC, "error", b"{not json", False, "2026-11-27T02:50:01.000Z")
    d = t.device(MAC)
    assert (d.vendor, d.ip, d.stage) == ("grandstream", "127.0.0.2", "error")
    assert d.detail.startswith("?: payload is not JSON")
    first, bad = t.timeline(MAC)
    assert first.at == T0 and "grandstream GRP2614" in first.text
    assert bad.at == "2026-11-27T02:50:01.000Z" and bad.text  # when it came; words, not a crash
    assert t.on_raw(MAC, "error", b"", False, "x") and t.payload(MAC, "error") is None  # resolved
    assert t.device(MAC).stage == "awaiting-assignment"
    assert t.on_raw(MAC, "discovered", b"", False, "x") and t.device(MAC) is None
    assert t.on_raw("000b82000001", "error", b"", False, "x") is False  # never known: nothing


def test_which_devices_use_a_profile():
    t = DeviceTable()
    t.on_device("000000000001", "assignment", {**ASSIGNMENT, "profile": "office"}, True, "x")
    t.on_device("000000000002", "assignment", ASSIGNMENT, True, "x")
    assert t.users_of("office") == ["000000000001"]
    assert t.users_of("default") == ["000000000001", "000000000002"]


# --- the form ------------------------------------------------------------------------------------


def test_form_fields_become_the_assignment_the_schema_describes():
    out = forms.to_document([("accounts.0.sip_server", " pbx.example.com "), ("accounts.0.user_id", "1001"),
                             ("accounts.0.port", "5062"), ("accounts.0.enabled", "no"),
                             ("accounts.1.sip_server", ""), ("codecs", "G722, pcmu"),
                             ("provisioning.check_interval", "60"), ("keys.0.type", "blf"),
                             ("keys.0.account", "1")])
    assert out.ok, out.errors
    assert out.document == {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "port": 5062,
                                          "enabled": False}],
                            "codecs": ["g722", "pcmu"], "provisioning": {"check_interval": 60},
                            "keys": [{"type": "blf", "account": 1}]}


def test_each_error_is_named_by_the_input_it_belongs_to():
    out = forms.to_document([("accounts.0.sip_server", "pbx"), ("accounts.0.user_id", "1"),
                             ("accounts.0.port", "abc"), ("accounts.2.user_id", "2"),
                             ("accounts.2.transport", "sctp"), ("vendor_settings", "{not json")])
    assert set(out.errors) == {"vendor_settings"}
    out = forms.to_document([("accounts.0.sip_server", "pbx"), ("accounts.0.user_id", "1"),
                             ("accounts.0.port", "abc"), ("accounts.2.user_id", "2"),
                             ("accounts.2.transport", "sctp"), ("time_zone", "Europe/Berlin\n")])
    # account 3 of the form is the document's second: the error still lands next to its input
    assert set(out.errors) == {"accounts.0.port", "accounts.2.transport"}
    assert "whole number" in out.errors["accounts.0.port"]
    out = forms.to_document([("accounts.0.user_id", "1")])
    assert out.ok and any("sip_server is missing" in w for w in out.warnings)  # a profile may supply it


def test_secrets_are_never_put_back_into_the_form_and_an_empty_one_keeps_the_old():
    fields = forms.to_fields({**ASSIGNMENT, "admin_password": "adm1n-pw", "codecs": ["g722", "pcmu"]})
    assert "s3cret-pw" not in json.dumps(fields) and "adm1n-pw" not in json.dumps(fields)
    assert fields["codecs"] == "g722, pcmu" and fields["accounts.0.user_id"] == "1001"
    out = forms.to_document([("accounts.0.sip_server", "pbx"), ("accounts.0.user_id", "1001")],
                            {**ASSIGNMENT, "admin_password": "adm1n-pw"})
    assert out.document["accounts"][0]["password"] == "s3cret-pw"
    assert out.document["admin_password"] == "adm1n-pw"
    out = forms.to_document([("accounts.0.sip_server", "pbx"), ("accounts.0.user_id", "1001"),
                             ("accounts.0.password", " new pw ")], ASSIGNMENT)
    assert out.document["accounts"][0]["password"] == " new pw "  # typed as is, spaces included


# --- users, sessions, what a role sees ------------------------------------------------------------


def test_users_hash_and_verify_with_scrypt_in_a_dollar_free_form():
    hashed = hash_password("correct horse")
    assert "$" not in hashed and hashed.startswith("scrypt.16384.8.1.")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct hors", hashed)
    assert not verify_password("x", "scrypt.1099511627776.8.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    users = parse_users(f"alice:admin:{hashed}, bob:viewer:{hashed}")
    assert users["alice"].admin and not users["bob"].admin
    for bad in (f"alice:root:{hashed}", "alice:admin:plaintext", f"a b:admin:{hashed}",
                f"alice:admin:{hashed},alice:viewer:{hashed}"):
        with pytest.raises(ValueError):
            parse_users(bad)


def test_sessions_expire_and_logins_are_throttled():
    s = Sessions()
    session = s.create("alice", "admin", now=0.0)
    assert s.get(session.token, now=10.0) is session
    assert s.get(session.token, now=10.0 + SESSION_IDLE + 1) is None
    assert s.get("forged", now=0.0) is None
    assert check_csrf(session, session.csrf) and not check_csrf(session, "x") and not check_csrf(None, session.csrf)
    for i in range(FAILURES_ALLOWED):
        assert not s.throttled("alice", "10.0.0.9", now=float(i))
        s.failed("alice", "10.0.0.9", now=float(i))
    assert s.throttled("alice", "10.0.0.9", now=10.0)
    assert not s.throttled("alice", "10.0.0.8", now=10.0)  # another client is not locked out
    assert not s.throttled("alice", "10.0.0.9", now=1000.0)


def test_passwords_are_masked_and_viewers_get_no_working_url():
    found = secrets_in(ASSIGNMENT, {"admin_password": "adm1n-pw", "vendor_settings": {"x": {"P2": "v"}}})
    assert found == {"s3cret-pw", "adm1n-pw"}
    assert mask(CONFIG["files"][0]["content"], found) == f"<gs_provision><P34>{MASK}</P34><P35>1001</P35></gs_provision>"
    assert cut_urls("published http://10.0.0.1:8080/p/TOKEN/cfg.xml (x)") == "published http://10.0.0.1:8080/… (x)"


# --- the running service, over HTTP ---------------------------------------------------------------

ADMIN_PW = "admin-password-1"
VIEWER_PW = "viewer-password-1"


def users_env() -> str:
    return f"alice:admin:{hash_password(ADMIN_PW)},victor:viewer:{hash_password(VIEWER_PW)}"


class ConsoleProcess:
    """`pnp console` as its own process against ``broker_url``, on a free loopback port."""

    def __init__(self, broker_url: str, directory: Path, users: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.log_path = directory / "console.log"
        self.env = {**os.environ, "PNP_MQTT_URL": broker_url, "PNP_CONSOLE_PORT": str(self.port),
                    "PNP_CONSOLE_USERS": users or users_env(), "PNP_DATA_DIR": str(directory),
                    "PNP_INSTANCE": "test", "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "1", **env}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "console"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(self.answers, timeout=20, interval=0.05)

    def answers(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            self.request("GET", "/login")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: dict | bytes | None = None, cookies: dict | None = None,
                headers: dict | None = None) -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        hdrs = dict(headers or {})
        if cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        data = None
        if isinstance(body, dict):
            data = urlencode(body).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = body
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        out_headers = {"set-cookie": response.headers.get_all("Set-Cookie") or [], **{
            k.lower(): v for k, v in response.getheaders() if k.lower() != "set-cookie"}}
        conn.close()
        return response.status, out_headers, text

    def login(self, user: str, password: str) -> dict:
        status, headers, text = self.request("GET", "/login")
        jar = cookies_of(headers)
        token = csrf_in(text)
        status, headers, _ = self.request("POST", "/login", {"csrf": token, "username": user, "password": password,
                                                              "next": "/"}, jar)
        assert status == 303, status
        self.login_headers = headers
        jar.update(cookies_of(headers))
        return jar

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def cookies_of(headers: dict) -> dict:
    jar = {}
    for line in headers["set-cookie"]:
        name, _, rest = line.partition("=")
        jar[name] = rest.split(";", 1)[0]
    return {k: v for k, v in jar.items() if v}


def csrf_in(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.fixture
def console(broker, tmp_path):
    c = ConsoleProcess(broker.url, tmp_path)
    yield c
    c.close()


def seed(probe: Probe) -> None:
    for kind, payload in (("discovered", discovered()), ("assignment", ASSIGNMENT), ("config", CONFIG),
                          ("resync", RESYNC), ("published", PUBLISHED), ("files", FILES)):
        probe.publish(f"pnp/devices/{MAC}/{kind}", payload, retain=True)


def test_every_page_needs_a_login_and_the_cookie_is_httponly_and_samesite(console):
    status, headers, _ = console.request("GET", "/devices/" + MAC)
    assert status == 303 and headers["location"].startswith("/login?next=")
    status, headers, _ = console.request("GET", "/events")
    assert status == 401
    status, headers, text = console.request("GET", "/login")
    jar = cookies_of(headers)
    status, headers, text = console.request("POST", "/login", {"csrf": csrf_in(text), "username": "alice",
                                                               "password": "wrong-password"}, jar)
    assert status == 401 and "wrong user name or password" in text
    status, headers, text = console.request("POST", "/login", {"csrf": "forged", "username": "alice",
                                                               "password": ADMIN_PW}, jar)
    assert status == 403  # the login form's own token
    jar = console.login("alice", ADMIN_PW)
    session_cookie = next(c for c in console.login_headers["set-cookie"] if c.startswith("pnp_console="))
    assert "HttpOnly" in session_cookie and "samesite=strict" in session_cookie.lower()
    assert "Secure" not in session_cookie  # plain HTTP here; with PNP_TLS_CERT it is Secure
    status, headers, text = console.request("GET", "/", cookies=jar)
    assert status == 200 and headers["content-security-policy"].startswith("default-src 'self'")
    # An open redirect after login is refused: only our own paths.
    status, headers, text = console.request("GET", "/login?next=//evil.example/")
    jar2 = cookies_of(headers)
    status, headers, _ = console.request("POST", "/login", {"csrf": csrf_in(text), "username": "alice",
                                                            "password": ADMIN_PW, "next": "//evil.example/"}, jar2)
    assert headers["location"] == "/"


def test_the_list_and_a_device_page_and_an_unknown_mac(console, probe):
    seed(probe)
    jar = console.login("alice", ADMIN_PW)
    wait_until(lambda: MAC in console.request("GET", "/", cookies=jar)[2], timeout=5)
    status, _, html = console.request("GET", "/", cookies=jar)
    assert f'data-mac="{MAC}"' in html and "published" in html
    status, _, html = console.request("GET", f"/devices/{MAC}", cookies=jar)
    assert status == 200 and f"cfg{MAC}.xml" in html and "ab" * 32 in html and "64 B" in html
    assert "/p/" not in html  # the working URL of published (no ACL here) is shown to no one
    # published and resync (working URLs, a SIP password) never reach the console: files says it
    assert 'class="event kind-files"' in html and "kind-published" not in html and "kind-resync" not in html
    assert "s3cret-pw" not in html  # not even an admin gets it back in the form
    status, _, html = console.request("GET", f"/devices/{MAC}/files/cfg{MAC}.xml", cookies=jar)
    assert status == 200 and "&lt;P35&gt;1001" in html and "s3cret-pw" not in html and MASK in html
    status, _, html = console.request("GET", "/devices/00000000beef", cookies=jar)
    assert status == 404 and "Not found" in html
    status, _, html = console.request("GET", "/devices/not-a-mac", cookies=jar)
    assert status == 404


def test_a_viewer_sees_state_but_no_password_no_working_url_and_cannot_assign(console, probe):
    seed(probe)
    # a notifier from before notify.url named the host only put the working URL in its status
    probe.publish(f"pnp/devices/{MAC}/notify", {
        "status": "accepted", "code": 200, "attempts": 1, "url": WORKING_URL, "revision": 1,
        "call_id": "c", "at": "2026-11-27T03:00:01.000Z", "v": 1}, retain=True)
    jar = console.login("victor", VIEWER_PW)
    wait_until(lambda: MAC in console.request("GET", "/", cookies=jar)[2], timeout=5)
    for path in ("/", f"/devices/{MAC}"):
        status, _, html = console.request("GET", path, cookies=jar)
        assert status == 200
        assert "s3cret-pw" not in html and "SECRETPATHTOKEN" not in html, path
    assert 'id="assign-form"' not in html
    status, _, html = console.request("GET", f"/devices/{MAC}/files/cfg{MAC}.xml", cookies=jar)
    assert status == 403
    csrf = csrf_in(html)
    status, _, html = console.request("POST", f"/devices/{MAC}/assign",
                                      {"csrf": csrf, "accounts.0.sip_server": "evil", "accounts.0.user_id": "1"},
                                      jar)
    assert status == 403
    time.sleep(0.3)
    assert probe.last(f"pnp/devices/{MAC}/assignment") == ASSIGNMENT  # untouched


def test_assigning_through_the_form_publishes_what_pnp_assign_publishes(console, probe):
    probe.publish(f"pnp/devices/{MAC}/discovered", discovered(), retain=True)
    jar = console.login("alice", ADMIN_PW)
    wait_until(lambda: console.request("GET", f"/devices/{MAC}", cookies=jar)[0] == 200, timeout=5)
    html = console.request("GET", f"/devices/{MAC}", cookies=jar)[2]
    fields = {"accounts.0.sip_server": "pbx.example.com", "accounts.0.user_id": "1001",
              "accounts.0.password": "s3cret-pw", "accounts.0.display_name": "Alice"}
    # No CSRF token: refused, nothing published.
    status, _, _ = console.request("POST", f"/devices/{MAC}/assign", fields, jar)
    assert status == 403
    # A bad value: the field's error, what was typed kept, nothing published.
    status, _, bad = console.request("POST", f"/devices/{MAC}/assign",
                                     {**fields, "csrf": csrf_in(html), "accounts.0.port": "99999"}, jar)
    assert status == 422
    assert re.search(r'data-for="accounts\.0\.port">[^<]*at most 65535', bad)
    assert 'value="99999"' in bad and 'value="pbx.example.com"' in bad and "s3cret-pw" not in bad
    assert probe.on(f"pnp/devices/{MAC}/assignment") == []
    status, headers, _ = console.request("POST", f"/devices/{MAC}/assign", {**fields, "csrf": csrf_in(html)}, jar)
    assert status == 303 and "assignment+published" in headers["location"]
    wait_until(lambda: probe.on(f"pnp/devices/{MAC}/assignment"), timeout=5)
    sent = [(t, p, r) for t, p, r in probe.messages if t == f"pnp/devices/{MAC}/assignment"]
    assert sent[-1][1] == encode_json(ASSIGNMENT)  # byte for byte what `pnp assign` sends
    # Unassign: the empty retained payload.
    status, _, _ = console.request("POST", f"/devices/{MAC}/unassign", {"csrf": csrf_in(html)}, jar)
    assert status == 303
    wait_until(lambda: probe.on(f"pnp/devices/{MAC}/assignment")[-1:] == [b""], timeout=5)


def test_bulk_import_checks_every_row_and_publishes_the_good_ones(console, probe):
    jar = console.login("alice", ADMIN_PW)
    csrf = csrf_in(console.request("GET", "/import", cookies=jar)[2])
    csv_text = ("mac,sip_server,user_id,password\n"
                "00:0B:82:00:00:01,pbx.example.com,2001,pw1\n"
                "000b82000002,pbx.example.com,2002,pw2\n"
                "not-a-mac,pbx.example.com,2003,pw3\n"
                "000b82000004,pbx.example.com,2004,pw\twith tab\n")
    status, _, html = console.request("POST", "/import", {"csrf": csrf, "text": csv_text}, jar)
    assert status == 200, html
    assert "Published 2" in html and "refused 2" in html and "not-a-mac" in html
    wait_until(lambda: probe.last("pnp/devices/000b82000001/assignment")
               and probe.last("pnp/devices/000b82000002/assignment"), timeout=5)
    assert probe.on("pnp/devices/000b82000004/assignment") == []


def test_profiles_list_edit_and_who_uses_them(console, probe):
    probe.publish(f"pnp/devices/{MAC}/assignment", {**ASSIGNMENT, "profile": "office"}, retain=True)
    probe.publish("pnp/profiles/office", {"codecs": ["g722"], "admin_password": "adm1n-pw"}, retain=True)
    viewer = console.login("victor", VIEWER_PW)
    wait_until(lambda: "office" in console.request("GET", "/profiles", cookies=viewer)[2], timeout=5)
    html = console.request("GET", "/profiles/office", cookies=viewer)[2]
    assert MAC in html and "adm1n-pw" not in html
    jar = console.login("alice", ADMIN_PW)
    csrf = csrf_in(console.request("GET", "/profiles/office", cookies=jar)[2])
    status, _, html = console.request("POST", "/profiles/office", {"csrf": csrf, "document": '{"codecs": ["g999"]}'}, jar)
    assert status == 422 and "g999" in html
    status, _, _ = console.request("POST", "/profiles/office", {"csrf": csrf, "document": '{"codecs": ["pcmu"]}'}, jar)
    assert status == 303
    wait_until(lambda: probe.last("pnp/profiles/office") == {"codecs": ["pcmu"]}, timeout=5)


def test_the_services_page_shows_the_status_topics(console, probe):
    probe.publish("pnp/services/generator/pbx1", {"state": "offline", "service": "generator", "instance": "pbx1",
                                                  "counters": {"rendered": 7}}, retain=True)
    jar = console.login("victor", VIEWER_PW)
    wait_until(lambda: "rendered=7" in console.request("GET", "/services", cookies=jar)[2], timeout=5)
    html = console.request("GET", "/services", cookies=jar)[2]
    assert "offline" in html and 'data-service="console/test"' in html  # its own status too


def read_events(console: ConsoleProcess, jar: dict, path: str, until: str, timeout: float = 10.0) -> str:
    """The event stream's text until ``until`` appears in it."""
    import socket

    sock = socket.create_connection(("127.0.0.1", console.port), timeout=timeout)
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n".encode())
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while until.encode() not in seen and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
    finally:
        sock.close()
    return seen.decode("utf-8", "replace")


def test_the_event_stream_pushes_a_new_phone_and_its_timeline(console, probe):
    jar = console.login("alice", ADMIN_PW)
    seen: dict[str, str] = {}

    def listen() -> None:
        seen["text"] = read_events(console, jar, "/events", MAC)

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(0.5)
    probe.publish(f"pnp/devices/{MAC}/discovered", discovered(), retain=True)
    t.join(15)
    assert "text/event-stream" in seen["text"]
    rows = [json.loads(line[6:]) for line in seen["text"].splitlines()
            if line.startswith("data: [")]
    assert rows and rows[-1][0]["mac"] == MAC and rows[-1][0]["stage"] == "awaiting-assignment"


def test_broker_down_shows_a_banner_and_refuses_to_assign(broker, probe, tmp_path):
    seed(probe)
    c = ConsoleProcess(broker.url, tmp_path)
    try:
        jar = c.login("alice", ADMIN_PW)
        wait_until(lambda: c.request("GET", f"/devices/{MAC}", cookies=jar)[0] == 200, timeout=5)
        probe.close()
        broker.stop()
        wait_until(lambda: 'id="broker-banner" class="banner" role="alert" hidden' not in
                   c.request("GET", "/", cookies=jar)[2], timeout=10)
        html = c.request("GET", f"/devices/{MAC}", cookies=jar)[2]
        assert re.search(r'<button type="submit" class="primary" disabled', html)
        assert f'data-mac="{MAC}"' in c.request("GET", "/", cookies=jar)[2]  # what it knew stays shown
        status, _, html = c.request("POST", f"/devices/{MAC}/assign", {
            "csrf": csrf_in(html), "accounts.0.sip_server": "pbx", "accounts.0.user_id": "1"}, jar)
        assert status == 503 and "nothing was published" in html
    finally:
        c.close()
        broker.start()


def test_hostile_requests_get_clear_answers(console):
    jar = console.login("alice", ADMIN_PW)
    for method, path in (("GET", "/devices/%00"), ("GET", "/profiles/..%2F..%2Fetc"), ("DELETE", "/"),
                         ("GET", "/static/../main.py"), ("GET", "/events?mac=<script>")):
        status, _, html = console.request(method, path, cookies=jar)
        assert status in (404, 405), (path, status)
        assert "<script>" not in html
    # A body announced too large is refused before it is read, not spooled to disk.
    status, _, _ = console.request("POST", "/import", b"x" * 10, jar, {"Content-Length": str(10**9),
                                                                      "Content-Type": "text/plain"})
    assert status == 413
    assert console.proc.poll() is None


def test_the_hub_sends_a_storm_of_changes_in_batches_and_each_role_its_own_view():
    from twisted.internet.task import Clock

    from console.service import FLUSH_EVERY, Client, Hub

    clock = Clock()
    t = DeviceTable()
    rendered: list[tuple[list[str], bool]] = []

    def rows(macs: list[str], admin: bool) -> list[dict]:
        rendered.append((macs, admin))
        return [{"mac": m, "detail": WORKING_URL if admin else cut_urls(WORKING_URL)} for m in macs]

    hub = Hub(clock, rows, lambda mac, n, admin: [e.kind for e in t.timeline(mac)[-n:]])
    seen: dict[str, list[bytes]] = {"admin": [], "viewer": [], "device": []}
    hub.clients |= {Client(seen["admin"].append, True, None), Client(seen["viewer"].append, False, None),
                    Client(seen["device"].append, False, MAC)}
    for kind, payload in (("discovered", discovered()), ("assignment", ASSIGNMENT), ("config", CONFIG),
                          ("files", FILES)):
        t.on_device(MAC, kind, payload, False, "x")
        hub.changed(MAC)
    hub.changed("000b82000001")
    assert all(not v for v in seen.values())  # nothing before the batch is due
    clock.advance(FLUSH_EVERY)
    assert sorted(rendered) == [([MAC, "000b82000001"][::-1], False), ([MAC, "000b82000001"][::-1], True)]
    admin, viewer = b"".join(seen["admin"]), b"".join(seen["viewer"])
    assert admin.count(b"event: rows") == 1 and b"SECRETPATHTOKEN" in admin
    assert viewer.count(b"event: rows") == 1 and b"SECRETPATHTOKEN" not in viewer
    assert b"event: timeline" not in viewer
    device = b"".join(seen["device"])
    assert b'event: timeline\ndata: ["discovered","assignment","config","files"]' in device
    clock.advance(10)
    assert admin == b"".join(seen["admin"])  # quiet: nothing more sent


def test_in_a_storm_the_rows_go_out_twice_a_second_and_four_times_a_second_again_after_it():
    from twisted.internet.task import Clock

    from console.service import FLUSH_EVERY, FLUSH_STORM, STORM_ROWS, Client, Hub

    clock = Clock()
    hub = Hub(clock, lambda macs, admin: [{"mac": m} for m in macs], lambda mac, n, admin: [])
    seen: list[bytes] = []
    hub.clients.add(Client(seen.append, True, None))
    storm = [f"000b82{i:06x}" for i in range(STORM_ROWS)]
    for mac in storm:
        hub.changed(mac)
    clock.advance(FLUSH_EVERY)
    assert len(seen) == 1 and all(m.encode() in seen[0] for m in storm)  # one batch, every row
    for mac in storm:
        hub.changed(mac)
    clock.advance(FLUSH_EVERY)
    assert len(seen) == 1  # the storm goes on: its rows wait for the longer batch
    clock.advance(FLUSH_STORM - FLUSH_EVERY)
    assert len(seen) == 2
    hub.changed(MAC)  # a quiet moment: the batch after a small one is due at the usual pace
    clock.advance(FLUSH_STORM)
    assert len(seen) == 3 and MAC.encode() in seen[2]
    hub.changed(MAC)
    clock.advance(FLUSH_EVERY)
    assert len(seen) == 4


def test_over_https_the_session_cookie_is_secure(broker, tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([sys.executable, "-m", "tools.cli", "tls-cert", "--host", "127.0.0.1", "--cert", str(cert),
                    "--key", str(key)], check=True, capture_output=True, timeout=60)
    c = ConsoleProcess.__new__(ConsoleProcess)
    c.port = free_port()
    c.log_path = tmp_path / "console.log"
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_CONSOLE_PORT": str(c.port), "PNP_CONSOLE_USERS": users_env(),
           "PNP_DATA_DIR": str(tmp_path), "PNP_TLS_CERT": str(cert), "PNP_TLS_KEY": str(key), "PNP_LOG_FORMAT": "text"}
    c.log = open(c.log_path, "wb")
    c.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "console"], env=env, stdout=c.log,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False

        def get_login() -> tuple:
            assert c.proc.poll() is None, c.log_path.read_text()
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", c.port, timeout=5, context=context)
                conn.request("GET", "/login")
                r = conn.getresponse()
                return r.status, r.msg.get_all("Set-Cookie"), r.read().decode()
            except OSError:
                return None

        status, cookies, html = wait_until(get_login, timeout=20, interval=0.1)
        token = csrf_in(html)
        conn = http.client.HTTPSConnection("127.0.0.1", c.port, timeout=5, context=context)
        conn.request("POST", "/login", body=urlencode({"csrf": token, "username": "alice", "password": ADMIN_PW}),
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              "Cookie": cookies[0].split(";", 1)[0]})
        r = conn.getresponse()
        assert r.status == 303
        session = next(x for x in r.msg.get_all("Set-Cookie") if x.startswith("pnp_console="))
        assert "Secure" in session and "HttpOnly" in session
    finally:
        c.close()


def test_killed_and_restarted_it_shows_everything_again_and_asks_to_log_in(broker, probe, tmp_path):
    seed(probe)
    c = ConsoleProcess(broker.url, tmp_path)
    try:
        jar = c.login("alice", ADMIN_PW)
        wait_until(lambda: f'data-mac="{MAC}"' in c.request("GET", "/", cookies=jar)[2], timeout=5)
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(5)
    finally:
        c.close()
    again = ConsoleProcess(broker.url, tmp_path)
    try:
        status, headers, _ = again.request("GET", "/", cookies=jar)
        assert status == 303 and headers["location"].startswith("/login")  # sessions lived in memory
        jar = again.login("alice", ADMIN_PW)
        wait_until(lambda: f'data-mac="{MAC}"' in again.request("GET", "/", cookies=jar)[2], timeout=5)
        assert "published" in again.request("GET", "/", cookies=jar)[2]
        # its status topic says offline by last will, then online again
        wait_until(lambda: (probe.last("pnp/services/console/test") or {}).get("state") == "online", timeout=5)
        assert any((p or {}).get("state") == "offline" for p in probe.json_on("pnp/services/console/test"))
    finally:
        again.close()


def test_bulk_import_of_an_uploaded_json_file(console, probe):
    jar = console.login("alice", ADMIN_PW)
    csrf = csrf_in(console.request("GET", "/import", cookies=jar)[2])
    document = json.dumps({"000b82000011": ASSIGNMENT, "000b82000012": {"accounts": [{"transport": "sctp"}]}})
    boundary = "pnpboundary42"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"phones.json\"\r\n"
            f"Content-Type: application/json\r\n\r\n{document}\r\n--{boundary}--\r\n").encode()
    status, _, html = console.request("POST", "/import", body, jar,
                                      {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, html
    assert "Published 1" in html and "refused 1" in html and "sctp" in html
    wait_until(lambda: probe.last("pnp/devices/000b82000011/assignment") == ASSIGNMENT, timeout=5)
    assert probe.on("pnp/devices/000b82000012/assignment") == []


# --- enrolment (issue 13) -------------------------------------------------------------------------

HTTP_PW = "dEvIcE-http-pw-1"
OLD_HTTP_PW = "dEvIcE-http-pw-0"
# a config with the device's HTTP credential, rendered into its file by the vendor's own settings
CREDENTIALED = {**CONFIG, "files": [{**CONFIG["files"][0], "content": (
    f"<gs_provision><P34>s3cret-pw</P34><P212>1</P212><P1360>{MAC}</P1360><P1361>{HTTP_PW}</P1361>"
    f"<!-- {OLD_HTTP_PW} --></gs_provision>")}],
    "auth": {"user": MAC, "password": HTTP_PW, "previous": OLD_HTTP_PW},
    "enrol": {"assignment": "0123456789abcdef", "rearm": ""}}
CONFLICT = {"state": "conflict", "epoch": 2, "since": "2026-12-07T03:00:00.000Z",
            "until": "2026-12-10T03:00:00.000Z", "bound": None, "candidate": "127.0.0.2",
            "addresses": ["127.0.0.2", "127.0.0.66"], "reason": "a second address asked", "mac": MAC,
            "at": "2026-12-07T03:00:05.000Z", "v": 1}
CONFLICT_ERROR = {"service": "fileserver", "code": "conflict", "addresses": ["127.0.0.2", "127.0.0.66"],
                  "message": f"{MAC} was asked for from 127.0.0.2 and from 127.0.0.66: nothing is served "
                             f"until it is re-armed (pnp assign --rearm {MAC})",
                  "at": "2026-12-07T03:00:05.000Z", "v": 1}


def test_the_table_folds_the_enrolment_into_a_column_and_the_search():
    t = DeviceTable()
    for kind, payload in (("discovered", discovered()), ("assignment", ASSIGNMENT), ("config", CONFIG),
                          ("files", FILES), ("enrolment", CONFLICT)):
        t.on_device(MAC, kind, payload, True, "x")
    d = t.device(MAC)
    assert (d.stage, d.enrolment) == ("published", "conflict")
    assert d.enrolment_detail == "conflict 127.0.0.2 and 127.0.0.66 (epoch 2)"
    assert [x.mac for x in t.rows(Filter(text="conflict"))] == [MAC]
    assert t.rows(Filter(text="enrolling")) == []


def test_the_device_page_shows_the_enrolment_and_the_conflict_and_admins_re_arm(console, probe):
    seed(probe)
    probe.publish(f"pnp/devices/{MAC}/enrolment", CONFLICT, retain=True)
    probe.publish(f"pnp/devices/{MAC}/error", CONFLICT_ERROR, retain=True)
    viewer = console.login("victor", VIEWER_PW)
    wait_until(lambda: "127.0.0.66" in console.request("GET", "/", cookies=viewer)[2], timeout=5)
    html = console.request("GET", "/", cookies=viewer)[2]
    assert "<th>Enrolment</th>" in html
    assert re.search(r'<td class="enrolment enrolment-conflict">conflict 127\.0\.0\.2 and 127\.0\.0\.66', html)
    status, _, html = console.request("GET", f"/devices/{MAC}", cookies=viewer)
    assert status == 200
    assert 'id="device-enrolment" class="enrolment enrolment-conflict"' in html
    assert re.search(r'id="conflict" role="alert"><p>[^<]*127\.0\.0\.2 and from 127\.0\.0\.66', html)
    assert "<dt>Until</dt><dd>2026-12-10T03:00Z</dd>" in html and "<dt>Addresses</dt>" in html
    assert 'id="rearm-form"' not in html and 'id="rotate-form"' not in html  # viewers command nothing
    status, _, _ = console.request("POST", f"/devices/{MAC}/rearm", {"csrf": csrf_in(html)}, viewer)
    assert status == 403
    jar = console.login("alice", ADMIN_PW)
    html = console.request("GET", f"/devices/{MAC}", cookies=jar)[2]
    assert 'id="rearm-form"' in html and ">Re-arm</button>" in html and ">Rotate credential</button>" in html
    status, _, _ = console.request("POST", f"/devices/{MAC}/rearm", {"csrf": "forged"}, jar)
    assert status == 403  # CSRF, like every other form
    time.sleep(0.3)
    assert probe.on(f"pnp/devices/{MAC}/rearm") == []
    status, headers, _ = console.request("POST", f"/devices/{MAC}/rearm", {"csrf": csrf_in(html)}, jar)
    assert status == 303 and headers["location"].startswith(f"/devices/{MAC}?done=re-arm+requested")
    wait_until(lambda: probe.on(f"pnp/devices/{MAC}/rearm"), timeout=5)
    first = probe.json_on(f"pnp/devices/{MAC}/rearm")[-1]
    assert set(first) == {"id", "at", "v"} and re.fullmatch(r"[0-9a-f]{32}", first["id"])
    assert [r for t, _, r in probe.messages if t == f"pnp/devices/{MAC}/rearm"] == [False]  # live copy of a retained one
    status, _, _ = console.request("POST", f"/devices/{MAC}/rotate", {"csrf": csrf_in(html)}, jar)
    assert status == 303
    wait_until(lambda: probe.on(f"pnp/devices/{MAC}/rotate"), timeout=5)
    assert probe.json_on(f"pnp/devices/{MAC}/rotate")[-1]["id"] != first["id"]  # a new id per command
    status, _, _ = console.request("POST", f"/devices/{MAC}/rearm", {"csrf": csrf_in(html)}, jar)
    wait_until(lambda: len(probe.on(f"pnp/devices/{MAC}/rearm")) == 2, timeout=5)
    assert len({c["id"] for c in probe.json_on(f"pnp/devices/{MAC}/rearm")}) == 2
    # the re-arm shows on the timeline (the console reads its own command back)
    wait_until(lambda: "re-arm requested" in console.request("GET", f"/devices/{MAC}", cookies=jar)[2], timeout=5)


def test_the_device_credential_is_masked_in_the_file_view_and_everywhere_else(console, probe):
    seed(probe)
    probe.publish(f"pnp/devices/{MAC}/config", CREDENTIALED, retain=True)
    jar = console.login("alice", ADMIN_PW)
    wait_until(lambda: "P1360" in console.request("GET", f"/devices/{MAC}/files/cfg{MAC}.xml",
                                                               cookies=jar)[2], timeout=5)
    status, _, html = console.request("GET", f"/devices/{MAC}/files/cfg{MAC}.xml", cookies=jar)
    assert status == 200 and f"&lt;P1360&gt;{MAC}" in html
    assert HTTP_PW not in html and OLD_HTTP_PW not in html and "s3cret-pw" not in html and MASK in html
    for path in ("/", f"/devices/{MAC}"):
        html = console.request("GET", path, cookies=jar)[2]
        assert HTTP_PW not in html and OLD_HTTP_PW not in html, path


def test_every_device_topic_the_console_subscribes_is_one_its_broker_login_may_read():
    from console.service import DEVICE_KINDS

    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    block = acl.split("\nuser console\n", 1)[1].split("\nuser ", 1)[0]
    readable = {line.split()[-1].rsplit("/", 1)[1] for line in block.splitlines()
                if line.startswith("topic read") and "/devices/+/" in line}
    # a kind the ACL refuses would stay empty under the deployment ACL, whatever the broker holds
    assert set(DEVICE_KINDS) == readable


def test_a_retained_json_null_clears_a_kind_as_an_empty_payload_does() -> None:
    from console.table import Payload

    assert Payload(b"null").empty and Payload(b"").empty
    assert not Payload(b'{"code": "x"}').empty
