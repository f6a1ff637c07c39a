"""The fileserver on a real broker and real sockets: what a phone and an operator would notice."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import defer, reactor, task, threads

from fileserver import main as fileserver
from fileserver import settings as fs
from tools.certs import make_pair
from services.broker import free_port
from tests.support import BrokerCase, Probe, eventually, make_settings

MAC = "000b82f55284"
OTHER = "000b82aabbcc"
GS_UA = f"Grandstream Model HW GRP2614 SW 1.0.0.31 DevId {MAC}"


def config(mac: str = MAC, text: str = "<gs_provision>P270=Alice</gs_provision>\n", revision: int = 1,
           notify_path: str = "", sha: str | None = None, name: str | None = None,
           enrol: tuple[str, str] | None = None, password: str | None = None,
           previous: str | None = None) -> dict:
    """A config as the generator sends it; ``enrol`` (assignment, rearm) and ``password`` as a
    generator with per-device credentials adds them (without: an older generator's)."""
    body = text.encode()
    data = {"files": [{"name": name or f"cfg{mac}.xml", "content_type": "application/xml",
                       "content": text, "encoding": "utf-8",
                       "sha256": sha or hashlib.sha256(body).hexdigest(), "size": len(body)}],
            "revision": revision, "template": "grandstream/grp26xx", "mac": mac,
            "vendor": "grandstream", "model": "GRP2614", "notify_path": notify_path, "v": 1}
    if enrol is not None:
        data["enrol"] = {"assignment": enrol[0], "rearm": enrol[1]}
    if password is not None:
        data["auth"] = {"user": mac, "password": password, "previous": previous}
    return data


def fetch(url: str, method: str = "GET", headers: dict | None = None, source: str = "127.0.0.2",
          context: ssl.SSLContext | None = None) -> defer.Deferred:
    """One request on a new connection, from a phone's own loopback address, off the reactor."""

    def blocking():
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=5,
                                               source_address=(source, 0), context=context)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5,
                                              source_address=(source, 0))
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    return threads.deferToThread(blocking)


class FileserverCase(BrokerCase):
    persistence = True
    extra: dict = {}

    def setUp(self):
        super().setUp()
        self.data = Path(self.mktemp())
        self.port = free_port()
        self.runtimes = []

    def settings(self, **extra):
        scheme = "https" if "tls_cert" in {**self.extra, **extra} else "http"
        values = {"http_port": str(self.port), "http_bind": "127.0.0.1",
                  "public_url": f"{scheme}://127.0.0.1:{self.port}/", **self.extra, **extra}
        return make_settings(self.broker, self.data, extra=fs.SETTINGS, **values)

    @defer.inlineCallbacks
    def start(self, wait_broker: bool = True, **extra):
        rt = yield self.start_service("fileserver", self.settings(**extra), fileserver.start)
        self.runtimes.append(rt)
        if wait_broker:
            yield rt.bus.when_subscribed()
        return rt

    def topic(self, kind: str, mac: str = MAC) -> str:
        return f"pnp/devices/{mac}/{kind}"

    @defer.inlineCallbacks
    def assign(self, payload: dict, mac: str = MAC):
        """Publish a config and wait for the published message that answers it."""
        before = len(self.probe.on(self.topic("published", mac)))
        self.probe.publish(self.topic("config", mac), json.dumps(payload), retain=True)
        published = yield eventually(
            lambda: len(self.probe.on(self.topic("published", mac))) > before
            and self.probe.last(self.topic("published", mac)))
        return published

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServingTest(FileserverCase):
    @defer.inlineCallbacks
    def test_published_url_and_a_200_whose_headers_prove_the_body(self):
        yield self.start()
        published = yield self.assign(config())
        # Grandstream: notify_path "" -> the directory URL, the phone appends cfg{mac}.xml
        self.assertTrue(published["url"].endswith("/"))
        self.assertIn("/p/", published["url"])
        (entry,) = published["files"]
        self.assertEqual(entry["url"], published["url"] + f"cfg{MAC}.xml")
        status, headers, body = yield fetch(entry["url"], headers={"User-Agent": GS_UA})
        self.assertEqual(status, 200)
        digest = hashlib.sha256(body).digest()
        self.assertEqual(body, b"<gs_provision>P270=Alice</gs_provision>\n")
        self.assertEqual(headers["etag"], f'"{digest.hex()}"')
        self.assertEqual(entry["sha256"], digest.hex())
        self.assertEqual(headers["repr-digest"], "sha-256=:" + base64.b64encode(digest).decode() + ":")
        self.assertEqual(headers["content-length"], str(len(body)))
        self.assertEqual(headers["content-type"], "application/xml")
        self.assertEqual(headers["cache-control"], "no-store")
        # HEAD: same headers, no body, and no download reported
        status, head_headers, head_body = yield fetch(entry["url"], "HEAD")
        self.assertEqual((status, head_body), (200, b""))
        self.assertEqual(head_headers["etag"], headers["etag"])
        self.assertEqual(head_headers["content-length"], str(len(body)))
        status, _, head_body = yield fetch(published["url"] + "nothing.xml", "HEAD")
        self.assertEqual((status, head_body), (404, b""))

    @defer.inlineCallbacks
    def test_files_names_the_files_and_no_url(self):
        # pbx and operator read files, not published: a working URL would hand them the password
        yield self.start()
        published = yield self.assign(config())
        files = yield eventually(lambda: self.probe.last(self.topic("files")))
        body = config()["files"][0]
        self.assertEqual(files["files"], [{"name": body["name"], "sha256": body["sha256"],
                                           "size": body["size"]}])
        self.assertEqual((files["revision"], files["vendor"]), (1, "grandstream"))
        token = urlsplit(published["url"]).path.split("/")[2]
        self.assertNotIn(token, json.dumps(files))
        self.assertNotIn("url", files)

    @defer.inlineCallbacks
    def test_other_vendors_get_the_files_own_url(self):
        yield self.start()
        published = yield self.assign(config(notify_path=f"cfg{MAC}.xml"))
        self.assertEqual(published["url"], published["files"][0]["url"])

    @defer.inlineCallbacks
    def test_if_none_match_in_each_form_gives_304(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        sha = published["files"][0]["sha256"]
        for value in (f'"{sha}"', f'W/"{sha}"', f'"nope", W/"{sha}"', f'"a","b" , "{sha}"', "*", sha,
                      f'"{sha.upper()}"'):
            status, headers, body = yield fetch(url, headers={"If-None-Match": value})
            self.assertEqual((status, body), (304, b""), value)
            self.assertEqual(headers["etag"], f'"{sha}"')
            self.assertEqual(headers["cache-control"], "no-store")
            # RFC 9110: a 304 carries no Content-Length unless it is the 200's
            self.assertNotIn(headers.get("content-length"), ("0",))
        for value in ('"other"', f'W/"{sha[:-1]}"'):
            status, _, body = yield fetch(url, headers={"If-None-Match": value})
            self.assertEqual(status, 200, value)
            self.assertTrue(body)
        # the same file twice: the phone is provisioned, and the bootstrap URL closes
        status, _, body = yield fetch(url, headers={"If-None-Match": ""})
        self.assertEqual((status, body), (403, b"this device is not enrolling: its phone uses its "
                                                b"own credentials\n"))

    @defer.inlineCallbacks
    def test_wrong_token_missing_file_and_directories_are_404(self):
        yield self.start()
        published = yield self.assign(config())
        good = published["files"][0]["url"]
        token = urlsplit(good).path.split("/")[2]
        wrong = good.replace(token, "A" * len(token))
        for url in (wrong, published["url"], published["url"] + "cfg000b82aabbcc.xml", self.base() + "/",
                    self.base() + f"/cfg{MAC}.xml", self.base() + "/p/"):
            status, _, body = yield fetch(url)
            self.assertEqual(status, 404, url)
            self.assertNotIn(b"Alice", body)

    @defer.inlineCallbacks
    def test_path_tricks_are_400(self):
        yield self.start()
        published = yield self.assign(config())
        path = urlsplit(published["files"][0]["url"]).path
        token = path.split("/")[2]
        for target in (f"/p/{token}/../{token}/cfg{MAC}.xml", f"/p/{token}%2fcfg{MAC}.xml",
                       f"/p/{token}/%2e%2e/cfg{MAC}.xml", f"/p/{token}/cfg{MAC}.xml%00",
                       "/p/" + "x" * 3000, f"/p/{token}//cfg{MAC}.xml", "/..\\x"):
            status, _, body = yield fetch(self.base() + target if target.startswith("/") else target)
            self.assertIn(status, (400, 404), target)
            self.assertNotIn(b"Alice", body)
        status, _, _ = yield fetch(self.base() + "/p/" + "x" * 3000)
        self.assertEqual(status, 400)
        status, headers, _ = yield fetch(self.base() + path, "POST")
        self.assertEqual(status, 405)

    @defer.inlineCallbacks
    def test_garbage_on_the_socket_does_not_stop_serving(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        path = urlsplit(url).path

        def hostile():
            import socket
            answers = []
            for junk in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 100,
                         b"GET " + path.encode() + b" HTTP/1.1\r\nUser-Agent: \xff\xfe DevId zz\r\n"
                         b"If-None-Match: \xff\r\n\r\n",
                         b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
                         b"\r\n\r\n\r\n", b"GET\r\n\r\n"):
                with socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                              source_address=("127.0.0.2", 0)) as sock:
                    try:
                        sock.sendall(junk)
                        if not junk.endswith(b"\xff\r\n\r\n"):  # a whole request: wait for it
                            sock.shutdown(socket.SHUT_WR)
                        answers.append(sock.recv(100)[:12])
                    except OSError:
                        answers.append(b"reset")
            return answers

        answers = yield threads.deferToThread(hostile)
        self.assertEqual(answers[1], b"HTTP/1.1 200")
        status, _, body = yield fetch(url)
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_user_agent_naming_another_mac_is_403(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        status, _, body = yield fetch(url, headers={"User-Agent": GS_UA.replace(MAC, OTHER)})
        self.assertEqual(status, 403)
        self.assertNotIn(b"Alice", body)
        status, _, _ = yield fetch(url, headers={"User-Agent": f"Yealink SIP-T46S 66.86.0.15 00:0B:82:AA:BB:CC"})
        self.assertEqual(status, 403)
        status, _, _ = yield fetch(url, headers={"User-Agent": GS_UA.upper().replace("DEVID", "DevId")})
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_a_flood_of_404s_is_refused_for_a_while(self):
        yield self.start(not_found_limit="5", ban_seconds="60", plain_paths="true")
        yield self.assign(config())
        for i in range(5):
            status, _, _ = yield fetch(f"{self.base()}/cfg000b82{i:06x}.xml", source="127.0.0.9")
            self.assertEqual(status, 404)
        # refused now, a hit on a plain path too (a walker guesses those); another client is not
        status, headers, body = yield fetch(f"{self.base()}/cfg{MAC}.xml", source="127.0.0.9")
        self.assertEqual(status, 429)
        self.assertGreater(int(headers["retry-after"]), 0)
        self.assertNotIn(b"Alice", body)
        status, _, _ = yield fetch(f"{self.base()}/cfg{MAC}.xml", source="127.0.0.2")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_a_phone_behind_the_attackers_nat_still_gets_its_file(self):
        # one address (127.0.0.7) for an attacker and a real phone, as behind one NAT
        yield self.start(not_found_limit="20", ban_seconds="300", trusted_proxies="127.0.0.5")
        published = yield self.assign(config())
        url, nat = published["files"][0]["url"], "127.0.0.7"
        token = urlsplit(url).path.split("/")[2]
        statuses = []
        for i in range(100):
            wrong = url.replace(token, f"{i:04d}" + token[4:])
            status, _, _ = yield fetch(wrong, source=nat, headers={"User-Agent": "curl/8.0"})
            statuses.append(status)
        self.assertEqual((statuses[0], statuses[-1]), (404, 429))
        # the attacker stays refused, on guesses and on another device's path alike
        status, _, _ = yield fetch(f"{self.base()}/p/{token[:-1]}x/cfg{MAC}.xml", source=nat)
        self.assertEqual(status, 429)
        status, _, body = yield fetch(url, source=nat, headers={"User-Agent": f"curl/8.0 DevId {OTHER}"})
        self.assertEqual((status, b"Alice" in body), (429, False))
        # the phone, with its own path and User-Agent, is served
        status, _, body = yield fetch(url, source=nat, headers={"User-Agent": GS_UA})
        self.assertEqual((status, b"Alice" in body), (200, True))
        # the healthcheck from this host and through our proxy is answered
        status, _, _ = yield fetch(self.base() + "/healthz", source="127.0.0.1")
        self.assertEqual(status, 200)
        status, _, _ = yield fetch(self.base() + "/metrics", source="127.0.0.5",
                                   headers={"X-Forwarded-For": "10.9.9.9"})
        self.assertEqual(status, 200)
        # a client seen through the proxy is banned like any other; the health through it is not
        for i in range(20):
            yield fetch(f"{self.base()}/x{i}", source="127.0.0.5", headers={"X-Forwarded-For": "10.7.7.7"})
        status, _, _ = yield fetch(f"{self.base()}/healthz", source="127.0.0.5",
                                   headers={"X-Forwarded-For": "10.7.7.7"})
        self.assertEqual(status, 200)
        status, _, _ = yield fetch(f"{self.base()}/nothing", source="127.0.0.5",
                                   headers={"X-Forwarded-For": "10.7.7.7"})
        self.assertEqual(status, 429)

    @defer.inlineCallbacks
    def test_healthz_and_metrics(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        yield fetch(url)
        yield fetch(url, headers={"If-None-Match": published["files"][0]["sha256"]})
        yield fetch(self.base() + "/nothing")
        status, _, body = yield fetch(self.base() + "/healthz")
        self.assertEqual(status, 200)
        health = json.loads(body)
        self.assertEqual((health["status"], health["devices"], health["mqtt_connected"]), ("ok", 1, True))
        status, headers, body = yield fetch(self.base() + "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        size = len(config()["files"][0]["content"])
        # the file and /healthz
        for line in ('pnp_fileserver_requests_total{code="200"} 2',
                     'pnp_fileserver_requests_total{code="304"} 1',
                     'pnp_fileserver_requests_total{code="404"} 1',
                     f"pnp_fileserver_sent_bytes_total {size}",
                     "pnp_fileserver_files_stored 1", "pnp_fileserver_devices_stored 1",
                     "pnp_fileserver_devices_provisioned 1"):
            self.assertIn(line + "\n", text)

    @defer.inlineCallbacks
    def test_plain_paths_are_off_by_default_and_on_by_setting(self):
        yield self.start(plain_paths="true")
        yield self.assign(config())
        yield self.assign(config(OTHER, "<gs_provision>P270=Bob</gs_provision>\n"), OTHER)
        status, _, body = yield fetch(f"{self.base()}/cfg{MAC}.xml")
        self.assertEqual((status, b"Alice" in body), (200, True))
        status, _, body = yield fetch(f"{self.base()}/cfg{OTHER}.xml")
        self.assertEqual((status, b"Bob" in body), (200, True))

    def candidate(self, rt, ip: str):
        enrolments = rt.component.service.core.enrolments
        return eventually(lambda: enrolments.get(MAC) and enrolments.get(MAC).candidate == ip)

    @defer.inlineCallbacks
    def test_pinned_to_the_discovered_ip(self):
        rt = yield self.start()  # PNP_PIN_IP is on by default
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        self.probe.publish(self.topic("discovered"), json.dumps({"mac": MAC, "ip": "127.0.0.2"}), retain=True)
        yield self.candidate(rt, "127.0.0.2")
        status, _, body = yield fetch(url, source="127.0.0.3")
        self.assertEqual(status, 403)
        self.assertNotIn(b"Alice", body)
        status, _, _ = yield fetch(url, source="127.0.0.2")
        self.assertEqual(status, 200)
        # X-Forwarded-For is not trusted by default: it cannot borrow the phone's address
        status, _, _ = yield fetch(url, source="127.0.0.3", headers={"X-Forwarded-For": "127.0.0.2"})
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_a_trusted_proxy_names_the_client(self):
        rt = yield self.start(trusted_proxies="127.0.0.5")
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        self.probe.publish(self.topic("discovered"), json.dumps({"mac": MAC, "ip": "10.1.2.3"}), retain=True)
        yield self.candidate(rt, "10.1.2.3")
        status, _, _ = yield fetch(url, source="127.0.0.5", headers={"X-Forwarded-For": "10.9.9.9, 10.1.2.3"})
        self.assertEqual(status, 200)
        event = yield eventually(lambda: self.probe.last(self.topic("fetched")))
        self.assertEqual(event["client"], "10.1.2.3")
        # the same header from anyone else is ignored
        status, _, _ = yield fetch(url, source="127.0.0.6", headers={"X-Forwarded-For": "10.1.2.3"})
        self.assertEqual(status, 403)


class StoreTest(FileserverCase):
    @defer.inlineCallbacks
    def test_unassign_removes_the_files(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        self.probe.publish(self.topic("config"), b"", retain=True)
        yield eventually(lambda: self.probe.on(self.topic("published"))[-1] == b"")
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_bad_checksum_is_refused_and_the_last_good_file_stays(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        self.probe.publish(self.topic("config"),
                           json.dumps(config(text="<gs_provision>P270=Mallory</gs_provision>\n",
                                             revision=2, sha="0" * 64)), retain=True)
        error = yield eventually(lambda: self.probe.last(self.topic("error")))
        self.assertEqual((error["service"], error["code"], error["field"]),
                         ("fileserver", "checksum", "files[0].sha256"))
        status, _, body = yield fetch(url)
        self.assertEqual(status, 200)
        self.assertIn(b"Alice", body)
        for hostile in (b"{not json", b"null", b"[1]", json.dumps({"files": [{"name": "../../etc"}]}).encode()):
            before = len(self.probe.on(self.topic("error")))
            self.probe.publish(self.topic("config"), hostile, retain=True)
            yield eventually(lambda: len(self.probe.on(self.topic("error"))) > before)
            self.assertEqual(self.probe.last(self.topic("error"))["code"], "payload")
        self.probe.publish("pnp/devices/not-a-mac/config", json.dumps(config()), retain=True)
        status, _, body = yield fetch(url)
        self.assertIn(b"Alice", body)
        # a good config again resolves the error; a new assignment, a new epoch: a new URL
        yield self.assign(config(text="<gs_provision>P270=Alice2</gs_provision>\n", revision=3,
                                 enrol=("a2", "")))
        # (the published of the provisioned epoch 1, enrolling false, may come in just before)
        published = yield eventually(lambda: self.probe.last(self.topic("published"))["epoch"] == 2
                                     and self.probe.last(self.topic("published")))
        yield eventually(lambda: self.probe.on(self.topic("error"))[-1] == b"")
        status, _, body = yield fetch(published["files"][0]["url"])
        self.assertIn(b"Alice2", body)

    @defer.inlineCallbacks
    def test_files_survive_a_restart_with_the_broker_down(self):
        rt = yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        yield rt.stop()
        self.broker.kill()
        yield self.start(wait_broker=False)
        status, headers, body = yield fetch(url)
        self.assertEqual(status, 200)
        self.assertEqual(headers["etag"], f'"{published["files"][0]["sha256"]}"')
        self.assertIn(b"Alice", body)

    @defer.inlineCallbacks
    def test_unassigned_while_down_is_removed_on_reconnect_and_paths_follow_the_secret(self):
        rt = yield self.start(file_secret="first-secret-0123456789")
        first = yield self.assign(config())
        yield self.assign(config(OTHER), OTHER)
        yield rt.stop()
        # while the fileserver is away: MAC is unassigned (no retained config left)
        self.probe.publish(self.topic("config"), b"", retain=True)
        before = len(self.probe.on(self.topic("published", OTHER)))
        rt = yield self.start(file_secret="second-secret-0123456789")
        # a new secret: new paths, republished; the old path no longer works
        moved = yield eventually(lambda: len(self.probe.on(self.topic("published", OTHER))) > before
                                 and self.probe.last(self.topic("published", OTHER)))
        self.assertNotEqual(urlsplit(moved["url"]).path.split("/")[2],
                            urlsplit(first["url"]).path.split("/")[2])
        status, _, _ = yield fetch(moved["files"][0]["url"])
        self.assertEqual(status, 200)
        yield eventually(lambda: self.probe.on(self.topic("published"))[-1] == b"", timeout=8)
        yield eventually(lambda: self.probe.on(self.topic("files"))[-1] == b"", timeout=8)
        status, _, _ = yield fetch(first["files"][0]["url"])
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_the_secret_is_generated_once_and_paths_are_stable(self):
        rt = yield self.start()
        published = yield self.assign(config())
        yield rt.stop()
        count = len(self.probe.on(self.topic("published"))), len(self.probe.on(self.topic("files")))
        yield self.start()
        status, _, _ = yield fetch(published["files"][0]["url"])
        self.assertEqual(status, 200)
        # same bytes as the retained message: not published again (the notifier would re-NOTIFY)
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual((len(self.probe.on(self.topic("published"))), len(self.probe.on(self.topic("files")))),
                         count)
        self.assertEqual(oct((self.data / "fileserver.secret").stat().st_mode & 0o777), "0o600")


class EventsTest(FileserverCase):
    @defer.inlineCallbacks
    def test_fetched_then_provisioned_on_the_second_download(self):
        yield self.start()
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        sha = published["files"][0]["sha256"]
        topic = self.topic("fetched")
        yield fetch(url, headers={"User-Agent": GS_UA})
        first = yield eventually(lambda: self.probe.last(topic))
        self.assertEqual((first["status"], first["provisioned"], first["sha256"], first["client"],
                          first["user_agent"], first["file"], first["revision"], first["auth"],
                          first["epoch"]),
                         (200, False, sha, "127.0.0.2", GS_UA, f"cfg{MAC}.xml", 1, "bootstrap", 1))
        late = Probe(self.broker.url, topic)  # retained: a late watcher sees it at once
        self.addCleanup(late.close)
        self.assertEqual(late.last(topic) or (yield eventually(lambda: late.last(topic))), first)
        # the phone reboots and compares: a 304 with the same tag
        yield fetch(url, headers={"If-None-Match": f'"{sha}"'})
        second = yield eventually(lambda: len(self.probe.on(topic)) == 2 and self.probe.last(topic))
        self.assertEqual((second["status"], second["provisioned"]), (304, True))
        enrolment = yield eventually(lambda: (self.probe.last(self.topic("enrolment")) or {}).get(
            "state") == "provisioned" and self.probe.last(self.topic("enrolment")))
        self.assertEqual((enrolment["epoch"], enrolment["bound"], enrolment["reason"]),
                         (1, "127.0.0.2", "fetched the same file again"))
        # a new assignment (a new epoch, a new URL): not provisioned until fetched twice again
        published = yield self.assign(config(text="<gs_provision>P270=Alice B</gs_provision>\n",
                                             revision=2, enrol=("b", "")))
        self.assertNotEqual(published["files"][0]["url"], url)
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 404)  # the old epoch's URL is dead
        url = published["files"][0]["url"]
        yield fetch(url)
        third = yield eventually(lambda: len(self.probe.on(topic)) == 3 and self.probe.last(topic))
        self.assertEqual((third["status"], third["provisioned"], third["revision"], third["epoch"]),
                         (200, False, 2, 2))
        yield fetch(url)
        fourth = yield eventually(lambda: len(self.probe.on(topic)) == 4 and self.probe.last(topic))
        self.assertEqual((fourth["status"], fourth["provisioned"]), (200, True))

    @defer.inlineCallbacks
    def test_a_304_without_an_earlier_200_is_not_provisioned(self):
        yield self.start()
        published = yield self.assign(config())
        yield fetch(published["files"][0]["url"], headers={"If-None-Match": "*"})
        event = yield eventually(lambda: self.probe.last(self.topic("fetched")))
        self.assertEqual((event["status"], event["provisioned"]), (304, False))


class SecurityTest(FileserverCase):
    @defer.inlineCallbacks
    def test_https_with_a_generated_certificate(self):
        cert_pem, key_pem = make_pair(["127.0.0.1"])
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "cert.pem").write_bytes(cert_pem)
        (directory / "key.pem").write_bytes(key_pem)
        yield self.start(tls_cert=str(directory / "cert.pem"), tls_key=str(directory / "key.pem"))
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        self.assertTrue(url.startswith("https://127.0.0.1:"))
        context = ssl.create_default_context(cafile=str(directory / "cert.pem"))
        status, headers, body = yield fetch(url, context=context)
        self.assertEqual(status, 200)
        self.assertEqual(headers["etag"], f'"{hashlib.sha256(body).hexdigest()}"')
        # plain HTTP on the same port gets nothing
        status = yield threads.deferToThread(self._plain_http_fails, url.replace("https", "http"))
        self.assertTrue(status)

    def _plain_http_fails(self, url):
        try:
            urllib.request.urlopen(url, timeout=3).read()
        except Exception:
            return True
        return False

    @defer.inlineCallbacks
    def test_basic_auth(self):
        yield self.start(http_auth="basic", http_user="phone", http_password="pa:ss word")
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        status, headers, body = yield fetch(url)
        self.assertEqual(status, 401)
        self.assertTrue(headers["www-authenticate"].startswith("Basic realm="))
        self.assertNotIn(b"Alice", body)
        wrong = base64.b64encode(b"phone:nope").decode()
        status, _, _ = yield fetch(url, headers={"Authorization": f"Basic {wrong}"})
        self.assertEqual(status, 401)
        right = base64.b64encode(b"phone:pa:ss word").decode()
        status, _, body = yield fetch(url, headers={"Authorization": f"Basic {right}"})
        self.assertEqual((status, b"Alice" in body), (200, True))
        # operators' endpoints need no credentials
        status, _, _ = yield fetch(self.base() + "/healthz")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_valid_credentials_are_served_to_a_banned_address(self):
        # plain paths name a MAC, so only the credentials tell the phone from the guesser
        yield self.start(http_auth="basic", http_user="phone", http_password="right",
                         plain_paths="true", not_found_limit="5", ban_seconds="300")
        yield self.assign(config())
        url, nat = f"{self.base()}/cfg{MAC}.xml", "127.0.0.8"
        wrong = base64.b64encode(b"phone:guess").decode()
        statuses = []
        for _ in range(8):
            status, _, _ = yield fetch(url, source=nat, headers={"Authorization": f"Basic {wrong}"})
            statuses.append(status)
        self.assertEqual((statuses[0], statuses[-1]), (401, 429))
        # the phone behind the same address: challenged first, then served
        status, headers, _ = yield fetch(url, source=nat)
        self.assertEqual(status, 401)
        self.assertTrue(headers["www-authenticate"].startswith("Basic realm="))
        right = base64.b64encode(b"phone:right").decode()
        status, _, body = yield fetch(url, source=nat, headers={"Authorization": f"Basic {right}"})
        self.assertEqual((status, b"Alice" in body), (200, True))
        # the guesser still is not
        status, _, body = yield fetch(url, source=nat, headers={"Authorization": f"Basic {wrong}"})
        self.assertEqual((status, b"Alice" in body), (429, False))

    @defer.inlineCallbacks
    def test_digest_auth_with_a_standard_client(self):
        yield self.start(http_auth="digest", http_user="phone", http_password="s3cret")
        published = yield self.assign(config())
        url = published["files"][0]["url"]
        status, headers, _ = yield fetch(url, source="127.0.0.1")
        self.assertEqual(status, 401)
        self.assertTrue(headers["www-authenticate"].startswith("Digest "))
        body = yield threads.deferToThread(self._digest_get, url, "s3cret")
        self.assertIn(b"Alice", body)
        failed = yield threads.deferToThread(self._digest_get, url, "wrong")
        self.assertEqual(failed, 401)

    def _digest_get(self, url, password):
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, url, "phone", password)
        opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(manager))
        try:
            return opener.open(url, timeout=5).read()
        except urllib.error.HTTPError as exc:
            return exc.code
