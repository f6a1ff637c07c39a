"""The notifier on a real broker and real UDP sockets: simulated phones on 127.0.0.x receive the
NOTIFY and answer (or not); the retained ``notify`` status says how it went."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

import notifier.main
from services.messages import Discovered, now_iso
from services.mqtt import Bus
from services.runner import Runtime
from services.sip import digest
from services.sip.message import build_response, parse, parse_name_addr, parse_via
from services.sip.transaction import Outcome, Timers
from notifier import build
from notifier.protocol import NotifyEndpoint
from notifier.state import Provision
from tests.support import BrokerCase, Probe, eventually, make_settings

MAC = "000b82f55284"
SUB_CALL_ID = "1848599395-5080-1@BJC.BGI.F.BHF"
PHONE_TAG = "1990948743"
OUR_TAG = "a1b2c3d4e5f6"
URL = "http://127.0.0.1:18080/p/tok/"


class Phone(DatagramProtocol):
    """A phone's SIP stack, as far as a NOTIFY goes: answer with ``status`` (None: silence)."""

    def __init__(self, status: int | None = 200, reason: str = "OK") -> None:
        self.status = status
        self.reason = reason
        self.received: list[tuple[float, object, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        request = parse(data)
        self.received.append((time.monotonic(), request, addr))
        if self.status is not None:
            answer = build_response(request, self.status, self.reason, to_tag="phonetag9",
                                    received=addr)
            self.transport.write(answer.to_bytes(), addr)

    @property
    def requests(self) -> list:
        return [r for _, r, _ in self.received]

    @property
    def transactions(self) -> list:
        """The first request of each transaction (top Via branch): with the tests' 10 ms T1, a
        slow turn of a loaded machine retransmits, and a retransmission is not a new NOTIFY."""
        seen: dict[str, object] = {}
        for r in self.requests:
            seen.setdefault(parse_via(r.headers.get_all("Via")[0]).branch, r)
        return list(seen.values())


class ChallengingPhone(Phone):
    """A phone that asks every NOTIFY for credentials (``status`` 401 or 407) and accepts only an
    answer made with ``user`` and ``password``; ``stale`` answers even a right one with a new
    challenge marked stale=true (an expired nonce)."""

    def __init__(self, user: str = "1001", password: str = "s3cret", status: int = 401,
                 stale: bool = False) -> None:
        super().__init__(None)
        self.user, self.password, self.challenge, self.stale = user, password, status, stale
        self.nonces: list[str] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        request = parse(data)
        self.received.append((time.monotonic(), request, addr))
        asked = "Proxy-Authorization" if self.challenge == 407 else "Authorization"
        answer = request.headers.get(asked)
        if answer and self.nonces and self._valid(request, answer) and not self.stale:
            status, reason, extra = 200, "OK", []
        else:
            self.nonces.append(f"n{len(self.nonces)}")
            header = "Proxy-Authenticate" if self.challenge == 407 else "WWW-Authenticate"
            stale = ", stale=true" if self.stale and answer else ""
            status, reason = self.challenge, "Unauthorized"
            extra = [(header, f'Digest realm="grp", nonce="{self.nonces[-1]}", qop="auth"{stale}')]
        response = build_response(request, status, reason, to_tag="phonetag9", received=addr,
                                  headers=extra)
        self.transport.write(response.to_bytes(), addr)

    def _valid(self, request, answer: str) -> bool:
        _, f = digest.parse_fields(answer)
        challenge = digest.Challenge(realm="grp", nonce=self.nonces[-1], qop=("auth",))
        expected = digest.digest_response(challenge, self.user, self.password, request.method,
                                          request.uri, f["cnonce"], int(f["nc"], 16))
        return f["nonce"] == self.nonces[-1] and f["username"] == self.user and f["response"] == expected


class NotifierBase(BrokerCase):
    """A broker, a probe, and helpers to run the notifier against phones on 127.0.0.x."""

    timeout = 30

    def setUp(self) -> None:
        super().setUp()
        self.data_dir = self.mktemp()
        self.runtimes: list[Runtime] = []

    def phone(self, address: str = "127.0.0.2", status: int | None = 200, reason: str = "OK",
              phone: Phone | None = None) -> Phone:
        phone = phone or Phone(status, reason)
        port = reactor.listenUDP(0, phone, interface=address)
        self.addCleanup(port.stopListening)
        phone.address = (address, port.getHost().port)
        return phone

    @defer.inlineCallbacks
    def start(self, data_dir: str | None = None, **values: str):
        values.setdefault("sip_t1", "0.01")
        values.setdefault("sip_t2", "0.08")
        # These phones answer as Grandstream, whose record says out-of-dialog; the tests here check
        # the dialog bookkeeping of the in-dialog form (the vendor default: test_vendor_records).
        values.setdefault("notify_dialog", "in-dialog")
        settings = make_settings(self.broker, data_dir or self.data_dir, extra=notifier.main.SETTINGS,
                                 **values)
        rt = yield self.start_service("notifier", settings, notifier.main.start)
        self.runtimes.append(rt)
        component = rt.component
        yield rt.bus.when_subscribed()
        return component

    def discover(self, phone: Phone, call_id: str = SUB_CALL_ID, cseq: int = 20000,
                 vendor: str = "Grandstream", mac: str = MAC, interface: str = "127.0.0.1",
                 **changes) -> None:
        ip, port = phone.address
        self.probe.publish(f"pnp/devices/{mac}/discovered", {**{
            "mac": mac, "vendor": vendor, "model": "GRP2614", "firmware": "1.0.0.31",
            "ip": ip, "port": port, "contact": f"<sip:{ip}:{port}>",
            "user_agent": "Grandstream GRP2614 1.0.0.31", "call_id": call_id,
            "from_tag": PHONE_TAG, "to_tag": OUR_TAG, "seen_at": now_iso(), "cseq": cseq,
            "request_uri": f"sip:MAC%3A{mac.upper()}@224.0.1.75",
            "from_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>;tag={PHONE_TAG}",
            "to_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>",
            "event": {"profile-type": "device", "vendor": vendor}, "interface": interface,
            "boot": 1, "v": 1,
        }, **changes}, retain=True)

    def publish(self, revision: int = 1, mac: str = MAC, url: str = URL, **enrolment: object) -> None:
        self.probe.publish(f"pnp/devices/{mac}/published", {
            "url": url, "revision": revision, "mac": mac, "vendor": "grandstream",
            "files": [{"name": f"cfg{mac}.xml", "url": url + f"cfg{mac}.xml", "sha256": "ab"}], "v": 1,
            **enrolment}, retain=True)

    def fetched(self, revision: int, provisioned: bool = True, mac: str = MAC) -> None:
        self.probe.publish(f"pnp/devices/{mac}/fetched", {
            "file": f"cfg{mac}.xml", "sha256": "ab", "status": 304, "client": "127.0.0.2",
            "user_agent": "Grandstream GRP2614", "provisioned": provisioned, "at": now_iso(),
            "revision": revision, "v": 1,
        }, retain=True)

    def credentials(self, revision: int, password: str, user: str = "1001", mac: str = MAC) -> None:
        self.probe.publish(f"pnp/devices/{mac}/resync", {
            "revision": revision, "username": user, "password": password, "mac": mac, "v": 1,
        }, retain=True)

    @defer.inlineCallbacks
    def running(self, phone: Phone, revision: int = 1, **start: str):
        """A phone provisioned with ``revision`` (its Plug and Play NOTIFY answered by hand)."""
        component = yield self.start(**start)
        self.discover(phone)
        yield self.quiet(0.1)
        self.fetched(revision=revision, provisioned=True)
        yield eventually(lambda: MAC in component.store.provisions)
        return component

    def statuses(self, mac: str = MAC) -> list[dict]:
        return [s for s in self.probe.json_on(f"pnp/devices/{mac}/notify") if s]

    def final(self, mac: str = MAC):
        return lambda: next((s for s in self.statuses(mac) if s["status"] != "sent"), None)

    @defer.inlineCallbacks
    def quiet(self, seconds: float = 0.3):
        yield task.deferLater(reactor, seconds, lambda: None)


class NotifierTest(NotifierBase):

    @defer.inlineCallbacks
    def test_prestaged_phone_gets_in_dialog_notify_matching_its_subscribe_and_is_accepted(self):
        phone = self.phone()
        yield self.start()
        self.publish(revision=3)
        yield self.quiet(0.1)
        self.discover(phone)
        status = yield eventually(self.final())
        self.assertEqual(len(phone.requests), 1)
        notify = phone.requests[0]
        _, _, source = phone.received[0]
        h = notify.headers
        self.assertEqual(notify.method, "NOTIFY")
        self.assertEqual(notify.uri, f"sip:{phone.address[0]}:{phone.address[1]}")
        self.assertEqual(h.get("Call-ID"), SUB_CALL_ID)
        to, frm = parse_name_addr(h.get("To")), parse_name_addr(h.get("From"))
        self.assertEqual(to.tag, PHONE_TAG)
        self.assertEqual(to.uri, f"sip:MAC%3A{MAC.upper()}@224.0.1.75")
        self.assertEqual(frm.tag, OUR_TAG)
        self.assertEqual(notify.cseq, (1, "NOTIFY"))
        self.assertEqual(h.get("Event"), "ua-profile")
        self.assertEqual(h.get("Subscription-State"), "terminated;reason=timeout")
        self.assertEqual(h.get("Content-Type"), "application/url")
        self.assertEqual(notify.body, URL.encode())
        # Via names the socket it really came from (so the 200 OK finds it), not the listener's.
        via = parse_via(h.get("Via"))
        self.assertEqual((via.host, via.port), source)
        self.assertEqual(source[0], "127.0.0.1")
        self.assertNotEqual(source[1], 5060)
        self.assertTrue(via.branch.startswith("z9hG4bK"))

        self.assertEqual(self.statuses()[0]["status"], "sent")
        self.assertEqual(status["status"], "accepted")
        self.assertEqual((status["code"], status["attempts"], status["revision"]), (200, 1, 3))
        # the status names the host, not the working URL: pbx and operator read it
        self.assertEqual((status["url"], status["call_id"], status["kind"]),
                         ("http://127.0.0.1:18080/…", SUB_CALL_ID, "ua-profile"))
        self.assertIsNotNone(status["rtt_ms"])
        # Retained: whoever looks later sees how it went.
        later = Probe(self.broker.url, f"pnp/devices/{MAC}/notify")
        self.addCleanup(later.close)
        retained = yield eventually(lambda: later.last(f"pnp/devices/{MAC}/notify"))
        self.assertEqual(retained["status"], "accepted")

    @defer.inlineCallbacks
    def test_phone_that_answers_488_is_rejected(self):
        phone = self.phone(status=488, reason="Not Acceptable Here")
        yield self.start()
        self.publish()
        self.discover(phone)
        status = yield eventually(self.final())
        self.assertEqual(status["status"], "rejected")
        self.assertEqual((status["code"], status["reason"]), (488, "Not Acceptable Here"))
        yield self.quiet(0.2)
        self.assertEqual(len(phone.requests), 1)  # a final answer stops the retransmissions

    @defer.inlineCallbacks
    def test_silent_phone_times_out_after_the_retransmissions(self):
        phone = self.phone()
        yield self.start()  # T1 = 10 ms, T2 = 80 ms: Timer F = 640 ms
        self.publish()
        self.discover(phone)
        yield eventually(lambda: phone.requests)
        # it answered once: an address of a phone, not a spoofed one (test_attack_net)
        yield eventually(lambda: any(s["status"] == "accepted" for s in self.statuses()))
        phone.status, phone.received = None, []
        self.publish(revision=2)
        status = yield eventually(lambda: next((s for s in self.statuses() if s["revision"] == 2
                                                and s["status"] != "sent"), None), timeout=5)
        self.assertEqual(status["status"], "timeout")
        self.assertIsNone(status["code"])
        # 0, .01, .03, .07, then every .08 until .64: 11 transmissions of the same bytes.
        self.assertEqual(status["attempts"], 11)
        self.assertEqual(len(phone.requests), 11)
        self.assertEqual({r.headers.get("Via") for r in phone.requests}, {phone.requests[0].headers.get("Via")})
        gaps = [b[0] - a[0] for a, b in zip(phone.received, phone.received[1:])]
        self.assertGreater(max(gaps), 0.06)  # doubled up to T2, not a fixed fast loop

    @defer.inlineCallbacks
    def test_five_subscribes_give_one_notify_and_a_new_revision_one_more(self):
        phone = self.phone()
        rt_component = yield self.start()
        self.publish(revision=1)
        for i in range(5):
            self.discover(phone, cseq=20000 + i)  # the phone's SUBSCRIBE retransmissions
        yield eventually(self.final())
        yield self.quiet()
        self.assertEqual(len(phone.transactions), 1)

        self.publish(revision=2)
        yield eventually(lambda: len([s for s in self.statuses() if s["status"] == "accepted"]) == 2)
        yield self.quiet()
        self.assertEqual(len(phone.transactions), 2)
        second = phone.transactions[1]
        self.assertEqual(second.headers.get("Call-ID"), SUB_CALL_ID)
        self.assertEqual(second.cseq, (2, "NOTIFY"))  # same dialog, next CSeq
        self.assertEqual(self.statuses()[-1]["revision"], 2)

        # A restart replays every retained message: nothing is sent twice.
        yield self.runtimes[0].stop()
        yield self.start()
        yield self.quiet(0.5)
        self.assertEqual(len(phone.transactions), 2)
        self.assertIsNotNone(rt_component)

        # A new boot (new Call-ID) is notified again.
        self.discover(phone, call_id="boot-2@127.0.0.2")
        yield eventually(lambda: len(phone.transactions) == 3)
        self.assertEqual(phone.transactions[2].headers.get("Call-ID"), "boot-2@127.0.0.2")
        self.assertEqual(phone.transactions[2].cseq, (1, "NOTIFY"))

    @defer.inlineCallbacks
    def test_the_notify_leaves_before_its_record_and_status_and_a_crash_between_repeats_it_once(self):
        """The order of a NOTIFY's work (issue 15): the datagram, then its sent record's
        commit and its ``sent`` status. A crash after the datagram and before the commit (the
        commit never run, then the process stopped: what kill -9 leaves) costs the phone one
        more NOTIFY after the restart, never none; once committed, a restart sends nothing."""
        phone = self.phone()
        self.publish()
        component = yield self.start()
        events: list[str] = []
        endpoint = next(iter(component.endpoints.values()))
        write, publish = endpoint._write, component.ctx.bus.publish

        def spy_write(out):
            events.append("datagram")
            write(out)

        def no_commit(commit) -> None:
            # when the commit would run; it does not: the process dies before writing
            reactor.callLater(0, events.append, "commit")

        def spy_publish(topic, payload, *args, **kwargs):
            if topic.endswith("/notify") and b'"sent"' in payload:
                events.append("status")
            return publish(topic, payload, *args, **kwargs)

        endpoint._write = spy_write
        writes = component.store.writes
        # what the start queued (the replayed publication) is on disk, no commit pending
        yield eventually(lambda: component.store.published and not writes.queue and not writes._asked)
        writes.later = no_commit
        component.ctx.bus.publish = spy_publish
        self.discover(phone)
        yield eventually(lambda: phone.transactions and "status" in events and "commit" in events)
        self.assertEqual(events[0], "datagram", events)  # then the commit and status, any order
        self.assertTrue(writes.queue)  # the sent record, never committed
        writes.queue.clear()  # the crash: it never reaches the file
        yield self.runtimes.pop().stop()
        # restarted: the retained discovery and publication come back; no record of the NOTIFY
        again = yield self.start()
        yield eventually(lambda: len(phone.transactions) == 2)
        yield eventually(lambda: again.store.writes.queue == [])  # committed
        yield self.runtimes.pop().stop()
        yield self.start()
        yield self.quiet(0.5)
        self.assertEqual(len(phone.transactions), 2, "a committed record keeps a restart quiet")

    @defer.inlineCallbacks
    def test_discoveries_read_together_get_their_notifies_before_any_sent_status(self):
        """A burst of discoveries (here the retained replay at start, read in one batch): each
        NOTIFY leaves without waiting for the ``sent`` statuses of the ones before it."""
        macs = [f"000b82f5{i:04x}" for i in range(6)]
        phones = {mac: self.phone(f"127.0.0.{i + 2}") for i, mac in enumerate(macs)}
        for mac, phone in phones.items():
            self.publish(mac=mac)
            self.discover(phone, mac=mac, call_id=f"burst-{mac}")
        yield self.quiet(0.2)  # all retained on the broker before the notifier subscribes
        events: list[str] = []
        original = NotifyEndpoint._write

        def spy_write(endpoint, out):
            events.append("datagram")
            original(endpoint, out)

        publish = Bus.publish

        def spy_publish(bus, topic, payload, *args, **kwargs):
            if topic.endswith("/notify") and b'"sent"' in payload:
                events.append("status")
            return publish(bus, topic, payload, *args, **kwargs)

        self.patch(NotifyEndpoint, "_write", spy_write)
        self.patch(Bus, "publish", spy_publish)
        yield self.start()
        yield eventually(lambda: events.count("status") == len(macs))
        first = events[:2 * len(macs)]
        self.assertEqual(first, ["datagram"] * len(macs) + ["status"] * len(macs), events)

    @defer.inlineCallbacks
    def test_statuses_are_held_together_in_order_and_a_stop_publishes_what_it_holds(self):
        """A NOTIFY's ``sent`` and its outcome are held (here for an hour, so that only the
        stop publishes them) and then leave in order, the ``sent`` first; a clean stop loses
        none of them."""
        import notifier.service

        self.patch(notifier.service, "STATUS_AFTER", 3600.0)
        self.patch(notifier.service, "STATUS_WAIT", 3600.0)
        phone = self.phone(status=None)  # answered by hand below
        self.publish()
        component = yield self.start()
        events: list[str] = []
        publish = Bus.publish

        def spy_publish(bus, topic, payload, *args, **kwargs):
            if topic.endswith("/notify") and payload:
                events.append(json.loads(payload)["status"])
            return publish(bus, topic, payload, *args, **kwargs)

        self.patch(Bus, "publish", spy_publish)
        self.discover(phone)
        yield eventually(lambda: phone.requests)
        _, notify, source = phone.received[0]
        ok = build_response(notify, 200, "OK", to_tag="phonetag9", received=source)
        phone.transport.write(ok.to_bytes(), source)
        yield eventually(lambda: component.counters_["notify_accepted"] == 1)
        events.append("stop")
        yield self.runtimes.pop().stop()
        self.assertEqual(events, ["stop", "sent", "accepted"])
        statuses = yield eventually(lambda: self.statuses() if len(self.statuses()) == 2 else None)
        self.assertEqual([s["status"] for s in statuses], ["sent", "accepted"])

    @defer.inlineCallbacks
    def test_held_statuses_are_published_before_the_store_commits_their_notify(self):
        """The sent log must never be on disk ahead of its statuses: a kill -9 between would
        lose them for good (the restart does not send that NOTIFY again). Statuses held for an
        hour still leave with the store's commit."""
        import notifier.service

        self.patch(notifier.service, "STATUS_AFTER", 3600.0)
        self.patch(notifier.service, "STATUS_WAIT", 3600.0)
        self.patch(notifier.main, "COMMIT_AFTER", 0.05)
        phone = self.phone()
        self.publish()
        component = yield self.start()
        self.discover(phone)
        yield eventually(lambda: component.counters_["notify_accepted"] == 1)
        statuses = yield eventually(lambda: self.statuses() if self.statuses() else None)
        self.assertEqual(statuses[0]["status"], "sent")
        self.assertEqual(component.store.writes.queue, [])  # and the sent log committed with them

    @defer.inlineCallbacks
    def test_a_refusal_and_its_clear_are_published_at_once_while_statuses_are_held(self):
        """``error`` is one retained topic that every service writes: a clear held back could
        erase an error another service raised meanwhile, so the notifier's own error and its
        clear do not wait with the statuses."""
        import notifier.service

        self.patch(notifier.service, "STATUS_AFTER", 3600.0)
        self.patch(notifier.service, "STATUS_WAIT", 3600.0)
        self.patch(notifier.main, "COMMIT_AFTER", 3600.0)
        phone = self.phone(phone=ChallengingPhone(password="right"))
        self.credentials(1, "wrong")
        component = yield self.running(phone)
        self.publish(revision=2)
        error = yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.assertIn("refused", error["message"])
        self.credentials(3, "right")
        component.store.provisions[MAC] = Provision(True, 3, time.time())
        self.publish(revision=4)
        yield eventually(lambda: self.probe.on(f"pnp/devices/{MAC}/error")[-1] == b"")

    @defer.inlineCallbacks
    def test_two_shards_send_each_phone_exactly_one_notify_across_restarts(self):
        phones = {f"000b82f5{i:04x}": self.phone(f"127.0.0.{i + 2}") for i in range(8)}
        owner = {mac: 1 + zlib.crc32(mac.encode()) % 2 for mac in phones}
        self.assertEqual(set(owner.values()), {1, 2})  # both instances have work
        dirs = {k: self.mktemp() for k in (1, 2)}

        @defer.inlineCallbacks
        def start_both():
            started = []
            for k in (1, 2):
                started.append((yield self.start(dirs[k], notifier_shard=f"{k}/2", instance=f"n{k}")))
            return started

        def notifies(mac: str) -> list:
            return phones[mac].transactions

        for mac in phones:
            self.publish(mac=mac)
        first = yield start_both()
        for mac, phone in phones.items():
            self.discover(phone, mac=mac, call_id=f"boot-1-{mac}")
        yield eventually(lambda: all(any(s["status"] == "accepted" for s in self.statuses(mac))
                                     for mac in phones))
        yield self.quiet(0.5)  # the other instance's NOTIFY, if it sent one, is here by now
        self.assertEqual({mac: len(notifies(mac)) for mac in phones}, {mac: 1 for mac in phones})
        for k, component in zip((1, 2), first):
            mine = sum(o == k for o in owner.values())
            self.assertEqual(component.counters_["notify_sent"], mine)
            self.assertEqual(component.counters_["notify_other_shard"], len(phones) - mine)

        # Both restart: the retained discoveries and publications are replayed to each, within
        # the window, and each one's own sent log keeps it quiet.
        for rt in self.runtimes:
            yield rt.stop()
        yield start_both()
        yield self.quiet(0.5)
        self.assertEqual({mac: len(notifies(mac)) for mac in phones}, {mac: 1 for mac in phones})

        # A new boot of every phone: one more NOTIFY each, from its owner only.
        for mac, phone in phones.items():
            self.discover(phone, mac=mac, call_id=f"boot-2-{mac}")
        yield eventually(lambda: all(len(notifies(mac)) >= 2 for mac in phones))
        yield self.quiet(0.5)
        self.assertEqual({mac: [r.headers.get("Call-ID") for r in notifies(mac)] for mac in phones},
                         {mac: [f"boot-1-{mac}", f"boot-2-{mac}"] for mac in phones})

    @defer.inlineCallbacks
    def test_provisioned_phone_gets_a_check_sync_when_its_config_changes(self):
        phone = self.phone()
        yield self.start(resync_reboot="true")
        self.discover(phone)
        self.publish(revision=1)
        yield eventually(self.final())
        yield self.quiet(0.05)
        self.fetched(revision=1, provisioned=True)
        yield self.quiet(0.2)
        self.publish(revision=2)
        yield eventually(lambda: len(phone.requests) == 2)
        resync = phone.requests[1]
        self.assertEqual(resync.headers.get("Event"), "check-sync;reboot=true")
        self.assertEqual(resync.uri, f"sip:{phone.address[0]}:{phone.address[1]}")
        self.assertNotEqual(resync.headers.get("Call-ID"), SUB_CALL_ID)
        status = yield eventually(lambda: (self.statuses()[-1]["kind"] == "check-sync"
                                           and self.statuses()[-1]["status"] == "accepted"
                                           and self.statuses()[-1]))
        self.assertEqual((status["revision"], status["code"]), (2, 200))
        self.publish(revision=2)  # the same revision again: no second resync
        yield self.quiet()
        self.assertEqual(len(phone.requests), 2)

    @defer.inlineCallbacks
    def test_first_downloads_cost_nothing_but_a_running_phones_still_move_its_revision(self):
        phone = self.phone()
        component = yield self.start(resync_reboot="true")
        self.fetched(revision=1, provisioned=False, mac="000b82f55299")  # a phone never provisioned
        self.discover(phone)
        self.publish(revision=1)
        yield eventually(self.final())
        yield self.quiet(0.05)
        self.fetched(revision=1, provisioned=True)
        # The running phone got revision 2 by itself (a periodic check): a first download, not
        # provisioned until its reboot, yet the notifier must know it has it.
        self.fetched(revision=2, provisioned=False)
        yield eventually(lambda: (component.store.provisions.get(MAC) or Provision(False, 0, 0)).revision == 2)
        self.publish(revision=2)
        yield self.quiet(0.3)
        self.assertEqual(len(phone.requests), 1)  # no check-sync for what it already runs
        self.assertNotIn("000b82f55299", component.store.provisions)

    @defer.inlineCallbacks
    def test_vendor_override_sends_out_of_dialog(self):
        phone = self.phone()
        yield self.start(notify_dialog="in-dialog,grandstream=out-of-dialog")
        self.publish()
        self.discover(phone)
        yield eventually(self.final())
        notify = phone.requests[0]
        self.assertNotEqual(notify.headers.get("Call-ID"), SUB_CALL_ID)
        self.assertIsNone(parse_name_addr(notify.headers.get("To")).tag)
        self.assertEqual(self.final()()["call_id"], notify.headers.get("Call-ID"))

    @defer.inlineCallbacks
    def test_bad_payloads_are_counted_and_the_next_good_one_works(self):
        phone = self.phone()
        component = yield self.start()
        self.probe.publish(f"pnp/devices/{MAC}/published", b"{nope")
        self.probe.publish(f"pnp/devices/{MAC}/discovered", {"mac": MAC})
        self.probe.publish("pnp/devices/NOTAMAC/discovered", {"mac": "x"})
        yield eventually(lambda: self.runtimes[0].ctx.counters["bad_payloads"] == 2)
        self.publish()
        self.discover(phone)
        status = yield eventually(self.final())
        self.assertEqual(status["status"], "accepted")
        self.assertIsNotNone(component)

    @defer.inlineCallbacks
    def test_sent_from_the_interface_the_subscribe_arrived_on(self):
        phone = self.phone("127.0.0.6")
        component = yield self.start(sip_interface="127.0.0.1,127.0.0.9")
        self.publish()
        self.discover(phone, interface="127.0.0.9")
        yield eventually(self.final())
        _, notify, source = phone.received[0]
        self.assertEqual(source, component.endpoints["127.0.0.9"].local)
        via = parse_via(notify.headers.get("Via"))
        self.assertEqual((via.host, via.port), source)

    @defer.inlineCallbacks
    def test_discovery_without_a_usable_address_is_reported_not_sent(self):
        phone = self.phone()
        yield self.start()
        self.publish()
        self.discover(phone, contact="<mailto:x@y>", ip="", port=0)
        report = yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.assertEqual(report["service"], "notifier")
        self.assertIn("Contact", report["message"])
        self.assertEqual(self.statuses(), [])
        self.assertEqual(phone.requests, [])

    @defer.inlineCallbacks
    def test_stop_ends_retransmissions(self):
        phone = self.phone(status=None)
        yield self.start(sip_t1="0.05", sip_t2="0.05")
        self.publish()
        self.discover(phone)
        yield eventually(lambda: len(phone.requests) >= 2)
        yield self.runtimes[0].stop()
        count = len(phone.requests)
        yield self.quiet(0.4)
        self.assertEqual(len(phone.requests), count)


class EnrolmentTest(NotifierBase):
    """The fileserver's gate as the notifier follows it: ``published.enrolling`` and ``epoch``."""

    @defer.inlineCallbacks
    def test_one_address_per_epoch_none_while_not_enrolling_and_it_survives_a_restart(self):
        phone, other = self.phone("127.0.0.2"), self.phone("127.0.0.3")
        component = yield self.start()
        self.publish(revision=1, enrolling=True, epoch=1)
        self.discover(phone, call_id="boot-1")
        yield eventually(self.final())
        # The same MAC from another address in the same epoch: no URL goes there.
        self.discover(other, call_id="forged-1")
        yield eventually(lambda: component.counters_["held_second_address"] == 1)
        # A newer revision in the same epoch is held from it too (the last discovery is its).
        self.publish(revision=2, enrolling=True, epoch=1)
        yield eventually(lambda: component.counters_["held_second_address"] == 2)
        # The phone's own next boot in the epoch still gets it.
        self.discover(phone, call_id="boot-2")
        yield eventually(lambda: len(phone.transactions) == 2)
        # Not enrolling (provisioned, expired, conflict): no ua-profile to anyone.
        self.publish(revision=3, enrolling=False, epoch=1)
        self.discover(phone, call_id="boot-3")
        self.discover(other, call_id="forged-2")
        yield self.quiet()
        self.assertEqual(component.counters_["held_second_address"], 2)

        # A restart keeps the epoch's address: the next forged boot is held all the same.
        yield self.runtimes[0].stop()
        component = yield self.start()
        self.publish(revision=3, enrolling=True, epoch=1)
        self.discover(other, call_id="forged-3")
        yield eventually(lambda: component.counters_["held_second_address"] >= 1)
        yield self.quiet(0.2)
        self.assertEqual(other.transactions, [])
        # A new epoch (re-armed) goes to whoever asks first in it, not to a discovery before it.
        self.publish(revision=4, enrolling=True, epoch=2)
        yield self.quiet(0.2)
        self.assertEqual(other.transactions, [])
        self.discover(other, call_id="after-rearm")
        yield eventually(lambda: other.transactions)
        self.assertEqual(len(phone.transactions), 2)
        self.assertEqual(other.transactions[0].body, URL.encode())
        self.assertEqual(component.store.addressed[MAC].address, "127.0.0.3")


class EndpointOnClockTest(unittest.TestCase):
    """The UDP endpoint on a real socket, its time from a task.Clock: RFC 3261's real timers
    (T1 0.5 s, Timer F 32 s) without waiting 32 s."""

    @defer.inlineCallbacks
    def test_real_timers_on_a_fake_clock(self):
        clock = task.Clock()
        endpoint = NotifyEndpoint(clock, Timers())
        port = reactor.listenUDP(0, endpoint, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        phone = Phone(status=None)
        phone_port = reactor.listenUDP(0, phone, interface="127.0.0.3")
        self.addCleanup(phone_port.stopListening)
        d = Discovered(mac=MAC, vendor="Yealink", model="T54W", firmware="1", ip="127.0.0.3",
                       port=phone_port.getHost().port, contact=f"<sip:127.0.0.3:{phone_port.getHost().port}>",
                       user_agent="Yealink", call_id="c1", from_tag="f", to_tag="t", seen_at=now_iso())
        request = build.ua_profile(d, URL, build.Local(*endpoint.local), "in-dialog", 1)
        results = []
        endpoint.send(request, build.destination(d), lambda result, _answer: results.append(result))
        sent_at = []
        for step in [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]:  # to 31.5 s
            clock.advance(step)
            yield eventually(lambda n=len(sent_at): len(phone.requests) == n + 2)
            sent_at.append(clock.seconds())
        self.assertEqual(sent_at, [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(results, [])
        clock.advance(0.5)  # 32 s: Timer F
        self.assertEqual(results[0].outcome, Outcome.TIMEOUT)
        self.assertEqual(results[0].attempts, 11)
        clock.advance(100)
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(phone.requests), 11)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_datagram_the_socket_refuses_is_counted_and_its_transaction_times_out(self):
        """A NOTIFY too large for UDP (a URL of 70 KB, say): the socket refuses it, the service
        goes on (Twisted's write raised MessageLengthError past the handler), the failure is
        counted, and Timer F reports the phone unreached."""
        clock = task.Clock()
        counters = Counter()
        endpoint = NotifyEndpoint(clock, Timers(), counters)
        port = reactor.listenUDP(0, endpoint, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        d = Discovered(mac=MAC, vendor="snom", model="D785", firmware="1", ip="127.0.0.4",
                       port=5060, contact="<sip:127.0.0.4:5060>", user_agent="snom", call_id="c3",
                       from_tag="f", to_tag="t", seen_at=now_iso())
        request = build.ua_profile(d, URL + "x" * 70_000, build.Local(*endpoint.local), "in-dialog", 1)
        results = []
        endpoint.send(request, build.destination(d), lambda result, _answer: results.append(result))
        self.assertEqual(counters["sip_send_errors"], 1)
        clock.advance(64 * Timers().t1)
        self.assertEqual([r.outcome for r in results], [Outcome.TIMEOUT])

    @defer.inlineCallbacks
    def test_late_and_duplicate_answers_on_the_wire(self):
        clock = task.Clock()
        counters = Counter()
        endpoint = NotifyEndpoint(clock, Timers(), counters)
        port = reactor.listenUDP(0, endpoint, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        phone = Phone(status=None)
        phone_port = reactor.listenUDP(0, phone, interface="127.0.0.4")
        self.addCleanup(phone_port.stopListening)
        d = Discovered(mac=MAC, vendor="snom", model="D785", firmware="1", ip="127.0.0.4",
                       port=phone_port.getHost().port, contact=f"<sip:127.0.0.4:{phone_port.getHost().port}>",
                       user_agent="snom", call_id="c2", from_tag="f", to_tag="t", seen_at=now_iso())
        request = build.ua_profile(d, URL, build.Local(*endpoint.local), "in-dialog", 1)
        results = []
        endpoint.send(request, build.destination(d), lambda result, _answer: results.append(result))
        yield eventually(lambda: phone.requests)
        got, source = phone.requests[0], phone.received[0][2]
        trying = build_response(got, 100, "Trying", received=source).to_bytes()
        ok = build_response(got, 200, "OK", to_tag="x", received=source).to_bytes()
        phone.transport.write(trying, source)
        phone.transport.write(ok, source)
        phone.transport.write(ok, source)  # a retransmitted 200
        yield eventually(lambda: counters["sip_duplicate_responses"] == 1)
        self.assertEqual([r.outcome for r in results], [Outcome.ACCEPTED])
        self.assertEqual(results[0].attempts, 1)
        clock.advance(5)  # Timer K
        phone.transport.write(ok, source)  # far too late: no transaction left
        yield eventually(lambda: counters["sip_stray_responses"] == 1)
        phone.transport.write(b"garbage\r\n\r\n", source)
        yield eventually(lambda: counters["sip_malformed"] == 1)
        self.assertEqual(len(results), 1)


class ChallengeTest(NotifierBase):
    """A phone that challenges the NOTIFY (RFC 3261 §22): one answer with credentials, never a
    loop, and every refusal reported."""

    def check_sync_final(self):
        return lambda: next((s for s in self.statuses() if s["kind"] == "check-sync"
                             and s["status"] != "sent"), None)

    @defer.inlineCallbacks
    def test_407_is_answered_with_the_password_of_the_revision_the_phone_runs(self):
        phone = self.phone(phone=ChallengingPhone(password="old", status=407))
        self.credentials(1, "old")
        component = yield self.running(phone, revision=1)
        self.credentials(2, "new")  # the new config changes the password; the phone has revision 1
        yield eventually(lambda: 2 in component.store.credentials.get(MAC, {}))
        self.publish(revision=2)
        status = yield eventually(self.check_sync_final())
        self.assertEqual((status["status"], status["code"], status["challenged"], status["revision"]),
                         ("accepted", 200, True, 2))
        first, second = phone.transactions
        self.assertIsNone(first.headers.get("Proxy-Authorization"))
        self.assertIn('username="1001"', second.headers.get("Proxy-Authorization"))
        # §22.2: the same Call-ID and From tag, the next CSeq, a new transaction
        self.assertEqual(second.call_id, first.call_id)
        self.assertEqual(second.headers.get("From"), first.headers.get("From"))
        self.assertEqual((first.cseq, second.cseq), ((1, "NOTIFY"), (2, "NOTIFY")))
        self.assertNotEqual(parse_via(first.headers.get("Via")).branch, parse_via(second.headers.get("Via")).branch)
        self.assertEqual(status["call_id"], first.call_id)
        self.assertIsNone(self.probe.last(f"pnp/devices/{MAC}/error"))

    @defer.inlineCallbacks
    def test_a_stale_nonce_gets_one_more_answer_and_then_the_refusal_is_reported(self):
        phone = self.phone(phone=ChallengingPhone(stale=True))
        self.credentials(1, "s3cret")
        component = yield self.running(phone)
        self.publish(revision=2)
        status = yield eventually(self.check_sync_final())
        yield self.quiet(0.2)
        self.assertEqual((status["status"], status["code"], status["challenged"]), ("rejected", 401, True))
        self.assertEqual(len(phone.transactions), 3)  # the first, and two answers: no loop
        error = yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.assertEqual(error["service"], "notifier")
        self.assertIn("refused", error["message"])
        self.assertEqual(component.counters_["notify_credentials_refused"], 1)

    @defer.inlineCallbacks
    def test_without_credentials_the_challenge_is_reported_with_what_is_missing(self):
        phone = self.phone(phone=ChallengingPhone())
        yield self.running(phone)
        self.publish(revision=2)
        status = yield eventually(self.check_sync_final())
        yield self.quiet(0.2)
        self.assertEqual((status["status"], status["code"], status["challenged"]), ("rejected", 401, False))
        self.assertEqual(len(phone.transactions), 1)
        error = yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.assertIn(f"pnp/devices/{MAC}/resync", error["message"])

    @defer.inlineCallbacks
    def test_a_refusal_is_cleared_by_the_next_accepted_notify(self):
        phone = self.phone(phone=ChallengingPhone(password="right"))
        self.credentials(1, "wrong")
        component = yield self.running(phone)
        self.publish(revision=2)
        yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.credentials(3, "right")
        component.store.provisions[MAC] = Provision(True, 3, time.time())
        self.publish(revision=4)
        yield eventually(lambda: any(s["status"] == "accepted" and s["revision"] == 4 for s in self.statuses()))
        yield eventually(lambda: self.probe.on(f"pnp/devices/{MAC}/error")[-1] == b"")

    @defer.inlineCallbacks
    def test_an_in_dialog_notify_answers_with_the_dialogs_next_cseq(self):
        phone = self.phone(phone=ChallengingPhone())
        self.credentials(1, "s3cret")
        yield self.start()
        self.publish(revision=1)
        self.discover(phone)
        status = yield eventually(self.final())
        self.assertEqual((status["status"], status["kind"], status["challenged"]), ("accepted", "ua-profile", True))
        first, second = phone.transactions
        self.assertEqual((first.call_id, second.call_id), (SUB_CALL_ID, SUB_CALL_ID))
        self.assertEqual(parse_name_addr(second.headers.get("From")).tag, OUR_TAG)
        self.assertEqual((first.cseq[0] + 1, "NOTIFY"), second.cseq)

    @defer.inlineCallbacks
    def test_a_bad_resync_payload_is_counted_and_changes_nothing(self):
        component = yield self.start()
        self.probe.publish(f"pnp/devices/{MAC}/resync", b'{"revision": "x"}', retain=True)
        self.credentials(1, "s3cret")
        yield eventually(lambda: MAC in component.store.credentials)
        self.assertEqual(component.counters_["bad_payloads"], 1)
        self.probe.publish(f"pnp/devices/{MAC}/resync", b"", retain=True)
        yield eventually(lambda: MAC not in component.store.credentials)

    @defer.inlineCallbacks
    def test_a_challenge_from_another_address_gets_no_credentials(self):
        # Someone on the LAN who saw the NOTIFY answers it first with a 401 of their own: our
        # Digest answer would let them guess the phone's password offline.
        phone = self.phone()
        attacker = self.phone("127.0.0.3", status=None)
        self.credentials(1, "s3cret")
        component = yield self.running(phone)

        def spoof(data: bytes, addr) -> None:
            request = parse(data)
            phone.received.append((time.monotonic(), request, addr))
            challenge = build_response(request, 401, "Unauthorized", to_tag="x", headers=[
                ("WWW-Authenticate", 'Digest realm="evil", nonce="n", algorithm=MD5')])
            attacker.transport.write(challenge.to_bytes(), addr)

        phone.datagramReceived = spoof
        self.publish(revision=2)
        status = yield eventually(self.check_sync_final())
        self.assertEqual((status["status"], status["code"], status["challenged"]), ("rejected", 401, False))
        self.assertEqual(len(phone.transactions), 1)
        self.assertIsNone(phone.requests[0].headers.get("Authorization"))
        self.assertEqual(component.counters_["notify_challenge_elsewhere"], 1)
        error = yield eventually(lambda: self.probe.last(f"pnp/devices/{MAC}/error"))
        self.assertIn("127.0.0.3", error["message"])
