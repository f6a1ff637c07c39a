"""The simulated fleet over real sockets: loopback multicast, UDP, HTTP from the phones' addresses.

Until the services land, the test plays the PBX itself (answers the SUBSCRIBE from the group
socket, sends the NOTIFY from another socket, serves files with twisted.web): a mock of the PBX
side, which is what these tests are about, the phones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import sys

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial import unittest
from twisted.web import resource, server

from services.broker import free_port
from services.sip import message as sip
from tools.simulate import Fleet, Timing, plan, simulate
from tools.simulate.vendors import file_names

GROUP = "224.0.1.75"
FAST = Timing(t1=0.1, notify_timeout=1.0, reboot_delay=0.05, jitter=0.0)


def _addresses() -> str:
    # A block of 127/8 of our own, so tests running side by side do not share phone sockets.
    return f"127.{random.randint(60, 250)}.{random.randint(0, 200)}.2"


class Files(resource.Resource):
    """The fileserver's side: files with ETag and Repr-Digest, 304 on a matching If-None-Match."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.tamper = False
        self.requests: list[tuple[str, str, str, int]] = []  # client, user agent, path, status

    def render_GET(self, request):
        path = request.path.decode()
        body = self.files.get(path)
        ua = (request.getHeader("user-agent") or "")
        client = request.getClientAddress().host
        if body is None:
            request.setResponseCode(404)
            self.requests.append((client, ua, path, 404))
            return b""
        digest = hashlib.sha256(body).digest()
        etag = '"' + ("0" * 64 if self.tamper else digest.hex()) + '"'
        request.setHeader("ETag", etag)
        request.setHeader("Repr-Digest", "sha-256=:" + base64.b64encode(digest).decode() + ":")
        if request.getHeader("if-none-match") == etag:
            request.setResponseCode(304)
            self.requests.append((client, ua, path, 304))
            return b""
        self.requests.append((client, ua, path, 200))
        return body


class MockPbx(protocol.DatagramProtocol):
    """Listener and notifier in one: answers SUBSCRIBEs, then NOTIFYs the Contact."""

    def __init__(self, base_url: str, answer: int = 200, notify: bool = True) -> None:
        self.base_url = base_url
        self.answer = answer
        self.notify = notify
        self.subscribes: list[tuple[tuple[str, int], sip.Request]] = []
        self.notified: dict[str, tuple[str, int]] = {}
        self.notify_answers: list[int] = []
        self.notifier = _Notifier(self)

    def url_for(self, mac: str, vendor: str) -> str:
        if vendor == "grandstream":
            return f"{self.base_url}/p/{mac}/"
        return f"{self.base_url}/p/{mac}/{file_names(_vendor(vendor), mac)[-1]}"

    def datagramReceived(self, data, addr):
        try:
            msg = sip.parse(data)
        except sip.SipParseError:
            return
        if not isinstance(msg, sip.Request) or msg.method != "SUBSCRIBE":
            return
        self.subscribes.append((addr, msg))
        reason = {200: "OK", 202: "Accepted", 500: "Server Internal Error"}.get(self.answer, "Nope")
        response = sip.build_response(msg, self.answer, reason, to_tag="pbx", received=addr)
        self.transport.write(response.to_bytes(), addr)
        if self.answer >= 300 or not self.notify or msg.call_id in self.notified:
            return
        event = dict(sip.parse_value(msg.headers.get("event"))[1])
        vendor = {"oem": "snom"}.get(event["vendor"].lower(), event["vendor"].lower())
        mac = _mac_of(msg.uri)
        contact = sip.parse_uri(sip.parse_name_addr(msg.headers.get("contact")).uri)
        self.notified[msg.call_id] = (contact.host, contact.port)
        self.notifier.send(msg, self.url_for(mac, vendor), (contact.host, contact.port))


class _Notifier(protocol.DatagramProtocol):
    def __init__(self, pbx: MockPbx) -> None:
        self.pbx = pbx

    def send(self, subscribe: sip.Request, url: str, to: tuple[str, int]) -> None:
        port = self.transport.getHost().port
        h = sip.Headers()
        h.add("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch={sip.new_branch()};rport")
        h.add("From", f"{subscribe.headers.get('to')};tag=pbx")
        h.add("To", subscribe.headers.get("from"))
        h.add("Call-ID", subscribe.call_id)
        h.add("CSeq", "1 NOTIFY")
        h.add("Event", "ua-profile")
        h.add("Content-Type", "application/url")
        self.transport.write(sip.Request("NOTIFY", f"sip:{to[0]}:{to[1]}", h, url.encode()).to_bytes(), to)

    def check_sync(self, to: tuple[str, int]) -> None:
        port = self.transport.getHost().port
        h = sip.Headers()
        h.add("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch={sip.new_branch()};rport")
        h.add("From", f"<sip:127.0.0.1:{port}>;tag=cs")
        h.add("To", f"<sip:{to[0]}:{to[1]}>")
        h.add("Call-ID", sip.new_call_id("127.0.0.1"))
        h.add("CSeq", "1 NOTIFY")
        h.add("Event", "check-sync;reboot=true")
        self.transport.write(sip.Request("NOTIFY", f"sip:{to[0]}:{to[1]}", h).to_bytes(), to)

    def datagramReceived(self, data, addr):
        msg = sip.parse(data)
        if isinstance(msg, sip.Response):
            self.pbx.notify_answers.append(msg.status)


def _vendor(name: str):
    from tools.simulate.vendors import VENDORS

    return VENDORS[name]


def _mac_of(uri: str) -> str:
    user = sip.parse_uri(uri).user
    return user.replace("MAC%3A", "").replace("MAC%3a", "").replace("MAC=", "").replace("MAC", "").lower()


class FleetTest(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.files = Files()
        self.http = reactor.listenTCP(0, server.Site(self.files), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.sip_port = free_port()
        self.pbx = MockPbx(f"http://127.0.0.1:{self.http.getHost().port}")
        # The receiver joins the group on loopback only (NETWORK-SAFETY.md rule 2).
        self.group = reactor.listenMulticast(self.sip_port, self.pbx, listenMultiple=True)
        self.addCleanup(self.group.stopListening)
        d = self.group.joinGroup(GROUP, "127.0.0.1")
        self.notifier = reactor.listenUDP(0, self.pbx.notifier, interface="127.0.0.1")
        self.addCleanup(self.notifier.stopListening)
        return d

    def serve(self, idents) -> None:
        # Real generated files: the simulated phones read them as their firmware would.
        from generator.render import Renderer

        renderer = Renderer()
        for ident in idents:
            rendered = renderer.render(ident.mac, ident.vendor.name, ident.model, ident.firmware,
                                       {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001"}]})
            for f in rendered.files:
                self.files.files[f"/p/{ident.mac}/{f.name}"] = f.body

    @defer.inlineCallbacks
    def test_a_mixed_fleet_is_provisioned_from_its_own_addresses(self):
        idents = plan(8, ["GRP2614", "T46S", "D785", "X4U"], _addresses())
        self.serve(idents)
        report = yield Fleet(idents, self.sip_port, FAST, timeout=10).run()
        self.assertTrue(report.ok, report.text())
        self.assertEqual(len(report.provisioned), 8)
        # each SUBSCRIBE came from the phone's own address and vendor port, once per phone
        sources = {addr for addr, _ in self.pbx.subscribes}
        self.assertEqual(sources, {(i.ip, i.port) for i in idents})
        self.assertEqual(self.pbx.notify_answers, [200] * 8)
        # two downloads per phone, from its address, with its vendor's User-Agent: 200 then 304
        by_client = {}
        for client, ua, path, status in self.files.requests:
            by_client.setdefault(client, []).append((ua, path, status))
        for ident in idents:
            got = by_client[ident.ip]
            self.assertEqual([s for _, _, s in got], [200, 304])
            self.assertEqual({ua for ua, _, _ in got}, {ident.vendor.user_agent(ident)})
            self.assertTrue(got[0][1].endswith(file_names(ident.vendor, ident.mac)[-1]))
        lat = report.to_dict()["latency_ms"]
        for name in ("subscribe_to_answer", "subscribe_to_notify", "notify_to_file", "boot_to_provisioned"):
            self.assertEqual(lat[name]["n"], 8, name)

    @defer.inlineCallbacks
    def test_spread_boots_take_the_time_asked(self):
        idents = plan(4, ["GRP2614"], _addresses())
        self.serve(idents)
        report = yield Fleet(idents, self.sip_port, FAST, boot_over=0.4, timeout=10).run()
        self.assertTrue(report.ok, report.text())
        boots = sorted(p.times["boot"] for p in report.phones)
        self.assertGreaterEqual(boots[-1] - boots[0], 0.25)

    @defer.inlineCallbacks
    def test_500_stops_the_phone_with_the_reason(self):
        self.pbx.answer = 500
        idents = plan(2, ["GRP2614"], _addresses())
        report = yield Fleet(idents, self.sip_port, FAST, timeout=10).run()
        self.assertEqual(len(report.failed), 2)
        self.assertEqual({(p.step, p.reason) for p in report.failed},
                         {("subscribe", "500 Server Internal Error")})
        self.assertEqual(len(self.pbx.subscribes), 2)  # no retry after a 500

    @defer.inlineCallbacks
    def test_4xx_is_ignored_until_the_attempts_run_out(self):
        self.pbx.answer = 404
        idents = plan(1, ["T46S"], _addresses())
        report = yield Fleet(idents, self.sip_port, Timing(t1=0.05, notify_timeout=0.3), timeout=10).run()
        self.assertEqual(len(self.pbx.subscribes), 5)
        self.assertEqual(report.failed[0].step, "subscribe")
        self.assertIn("404", report.failed[0].reason)

    @defer.inlineCallbacks
    def test_no_notify_fails_at_notify(self):
        self.pbx.notify = False
        idents = plan(1, ["GRP2614"], _addresses())
        report = yield Fleet(idents, self.sip_port, Timing(t1=0.1, notify_timeout=0.3), timeout=10).run()
        self.assertEqual((report.failed[0].step, report.failed[0].reason),
                         ("notify", "no NOTIFY within 0.3s of the answer"))

    @defer.inlineCallbacks
    def test_a_lying_etag_fails_at_verify(self):
        self.files.tamper = True
        idents = plan(1, ["GRP2614"], _addresses())
        self.serve(idents)
        report = yield Fleet(idents, self.sip_port, FAST, timeout=10).run()
        self.assertEqual(report.failed[0].step, "verify")
        self.assertIn("is not the body's sha256", report.failed[0].reason)

    @defer.inlineCallbacks
    def test_a_missing_file_and_a_taken_address_are_reported_per_phone(self):
        idents = plan(2, ["GRP2614"], _addresses())
        busy = reactor.listenUDP(idents[1].port, protocol.DatagramProtocol(), interface=idents[1].ip)
        self.addCleanup(busy.stopListening)
        report = yield Fleet(idents, self.sip_port, FAST, timeout=10).run()
        steps = {p.mac: (p.step, p.reason) for p in report.failed}
        self.assertEqual(steps[idents[0].mac], ("fetch", f"GET cfg{idents[0].mac}.xml: HTTP 404"))
        self.assertEqual(steps[idents[1].mac][0], "bind")

    @defer.inlineCallbacks
    def test_refused_and_silent_servers_are_retried_then_reported(self):
        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        closed = free_port()
        idents = plan(2, ["T46S"], _addresses())
        urls = {idents[0].mac: f"http://127.0.0.1:{closed}/x.cfg",
                idents[1].mac: f"http://127.0.0.1:{silent.getHost().port}/x.cfg"}
        self.pbx.url_for = lambda mac, vendor: urls[mac]
        timing = Timing(t1=0.1, notify_timeout=1, fetch_retries=1, fetch_retry_delay=0.1)
        report = yield Fleet(idents, self.sip_port, timing, timeout=10, fetch_timeout=0.3).run()
        reasons = {p.mac: p.reason for p in report.failed}
        self.assertEqual(reasons[idents[0].mac], "GET x.cfg: connection refused (after 1 retries)")
        self.assertEqual(reasons[idents[1].mac], "GET x.cfg: timed out (after 1 retries)")

    @defer.inlineCallbacks
    def test_https_with_a_trusted_self_signed_certificate(self):
        from pathlib import Path

        from twisted.internet.ssl import Certificate

        from tools.certs import make_pair
        from fileserver.tls import listen

        cert, key = make_pair(["127.0.0.1"])
        d = Path(self.mktemp())
        d.mkdir()
        (d / "c.pem").write_bytes(cert)
        (d / "k.pem").write_bytes(key)
        tls = listen(reactor, server.Site(self.files), 0, "127.0.0.1", d / "c.pem", d / "k.pem")
        self.addCleanup(tls.stopListening)
        self.pbx.base_url = f"https://127.0.0.1:{tls.getHost().port}"
        idents = plan(2, ["GRP2614", "D785"], _addresses())
        self.serve(idents)
        report = yield Fleet(idents, self.sip_port, FAST, timeout=10, trust=Certificate.loadPEM(cert)).run()
        self.assertTrue(report.ok, report.text())
        # without trusting it, the phones refuse the server, as real ones do
        idents = plan(1, ["GRP2614"], _addresses())
        self.serve(idents)
        timing = Timing(t1=0.1, notify_timeout=1, reboot_delay=0.05, fetch_retries=0)
        report = yield Fleet(idents, self.sip_port, timing, timeout=10).run()
        self.assertEqual(report.failed[0].step, "fetch")

    @defer.inlineCallbacks
    def test_the_run_is_bounded(self):
        self.pbx.notify = False
        idents = plan(1, ["GRP2614"], _addresses())
        report = yield Fleet(idents, self.sip_port, Timing(t1=0.1, notify_timeout=30), timeout=0.5).run()
        self.assertEqual(report.failed[0].step, "notify")
        self.assertIn("when the run ended", report.failed[0].reason)
        self.assertLess(report.duration, 2)

    @defer.inlineCallbacks
    def test_lingering_phones_answer_a_resync_and_take_the_new_file(self):
        from tests.support import eventually

        (ident,) = idents = plan(1, ["T46S"], _addresses())
        self.serve(idents)
        fleet = Fleet(idents, self.sip_port, FAST, timeout=10, linger=1.5)
        done = fleet.run()
        yield eventually(lambda: fleet.progress().provisioned == 1)
        path = f"/p/{ident.mac}/{ident.mac}.cfg"
        from generator.render import Renderer

        changed = Renderer().render(ident.mac, "yealink", "T46S", ident.firmware,
                                    {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1002"}]})
        self.files.files[path] = changed.files[1].body
        self.pbx.notifier.check_sync((ident.ip, ident.port))
        report = yield done
        self.assertTrue(report.ok, report.text())
        self.assertEqual(report.phones[0].resyncs, 1)
        self.assertIsNotNone(report.phones[0].times["resynced"])
        self.assertEqual([s for _, _, p, s in self.files.requests if p == path], [200, 304, 200, 304])

    @defer.inlineCallbacks
    def test_the_command_line_prints_json_and_exits_by_outcome(self):
        idents = plan(3, ["GRP2614", "T46S", "D785"], _addresses())
        self.serve(idents)
        args = ["-m", "tools.cli", "simulate", "--sip-port", str(self.sip_port), "--count", "3",
                "--models", "GRP2614,T46S,D785", "--address-start", idents[0].ip, "--json",
                "--reboot-delay", "0.05", "--timeout", "10"]
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, args, env=env)
        self.assertEqual(code, 0, err.decode())
        data = json.loads(out)
        self.assertEqual((data["total"], data["provisioned"], data["failed"]), (3, 3, 0))
        self.assertEqual({p["vendor"] for p in data["phones"]}, {"grandstream", "yealink", "snom"})
        # its own CPU, for a bench to read beside the services' (bench/boot_storm.py)
        self.assertEqual(set(data["simulator_cpu_s"]), {"staging", "phones"})

        self.pbx.answer = 500
        args[args.index(idents[0].ip)] = _addresses()
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, args[:-4] + ["--timeout", "5"], env=env)
        self.assertEqual(code, 1, err.decode())
        self.assertEqual(json.loads(out)["failures_by_step"], {"subscribe": 3})


class ApiTest(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_simulate_without_a_pbx_fails_every_phone_at_subscribe(self):
        report = yield simulate(2, ["GRP2614"], sip_port=free_port(), address_start=_addresses(),
                                timing=Timing(t1=0.02, notify_timeout=0.1), timeout=5)
        self.assertEqual(report.failures_by_step(), {"subscribe": 2})
        self.assertIn("no 2xx to 5 SUBSCRIBEs", report.failed[0].reason)
