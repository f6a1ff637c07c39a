"""An attacker on the phones' LAN against the listener and the notifier (issue 13, items 5-7).

Real sockets and a real mosquitto started by the test: the attacker sits on 127.0.0.66 (what
arrives there is what a host whose address it spoofed would receive), real phones on 127.0.0.2
and up. Numbers (answer sizes, cache bytes, NOTIFY bytes) are printed for docs/SECURITY.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.internet import defer, task, reactor

from listener.discovery import SubscribeCore
from services.messages import now_iso
from services.sip.message import MAX_VIAS, build_response, parse
from tests.support import BrokerCase, Probe, eventually
from tests import test_listener, test_notifier
from tests.test_listener import free_udp_port
from tests.test_sip_message import GRANDSTREAM

ATTACKER = "127.0.0.66"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def via_bomb(data: bytes, vias: int) -> bytes:
    """The SUBSCRIBE with ``vias - 1`` one-letter Vias after its own: 2 bytes each in, a whole
    ``Via: a`` line each in an answer that copies them."""
    return data.replace(b"; rport\r\n", b"; rport," + b",".join([b"a"] * (vias - 1)) + b"\r\n", 1)


def large_subscribe(n: int, pad: int = 20_000) -> bytes:
    """A SUBSCRIBE whose answer is large (a long Call-ID and From are echoed) but no larger than
    it: what an attacker sends to fill the listener's memory of answers."""
    call_id = f"{n:08d}-".encode() + b"c" * pad
    return (GRANDSTREAM.replace(b"1848599395-5080-1@BJC.BGI.F.BHF", call_id)
            .replace(b"z9hG4bK1686351121", f"z9hG4bK{n:08d}".encode())
            .replace(b"tag=1990948743", b"tag=" + b"t" * pad).replace(b"000B82F55284", b"000B82F5AAAA"))


def test_an_8_kb_subscribe_with_3800_vias_gets_no_answer_phones_still_do():
    core = SubscribeCore(secret=b"k" * 16, rate=1e9, burst=1e9)
    bomb = via_bomb(GRANDSTREAM, 3800)
    before = len(build_response(parse(bomb), 200, "OK", to_tag="x", received=(ATTACKER, 5060)).to_bytes())
    print(f"\n8 KB SUBSCRIBE with 3,800 Vias: {len(bomb)} bytes in; the answer RFC 3261 builds "
          f"{before} bytes (x{before / len(bomb):.1f}); sent now: none")
    assert 7_500 < len(bomb) < 9_000 and before > 3 * len(bomb)  # the case, as measured
    for event in (b"ua-profile", b"presence"):  # the 200 OK and the 489 alike
        out = core.handle(bomb.replace(b"ua-profile", event), (ATTACKER, 5060), "127.0.0.1", 1.0)
        assert (out.verdict, out.reply, out.discovered) == ("amplifying", None, None)
    # a few Vias, as a SUBSCRIBE that crossed proxies would carry, are still answered
    few = core.handle(via_bomb(GRANDSTREAM, MAX_VIAS), ("127.0.0.2", 5080), "127.0.0.1", 2.0)
    assert few.verdict == "answered" and few.reply is not None
    assert core.counters["amplifying"] == 2


def test_no_answer_is_larger_than_its_request():
    # Compact header names and no parameters: the smallest SUBSCRIBE a sender can make, whose
    # 200 OK spells the names out and adds received, rport, a tag, Contact and Expires.
    tiny = (b"SUBSCRIBE sip:MAC000b82f55284@224.0.1.75 SIP/2.0\r\nv:SIP/2.0/UDP h;rport\r\n"
            b"f:<sip:MAC000b82f55284@h>;tag=1\r\nt:<sip:a@h>\r\ni:1\r\nCSeq:1 SUBSCRIBE\r\n"
            b"o:ua-profile\r\n\r\n")
    core = SubscribeCore(secret=b"k" * 16, rate=1e9, burst=1e9)
    out = core.handle(tiny, (ATTACKER, 40000), "127.0.0.1", 1.0)
    assert (out.verdict, out.reply, out.discovered) == ("amplifying", None, None)
    grown = core.handle(tiny.replace(b"\r\n\r\n", b"\r\nUser-Agent: " + b"u" * 200 + b"\r\n\r\n"),
                        (ATTACKER, 40000), "127.0.0.1", 2.0)
    assert grown.verdict == "answered" and grown.reply is not None


def test_the_answer_cache_is_bounded_in_bytes_and_counts_evictions():
    budget = 4 << 20
    core = SubscribeCore(secret=b"k" * 16, rate=1e9, burst=1e9, cache_bytes=budget)
    sent = 0
    for n in range(1_500):
        data = large_subscribe(n)
        out = core.handle(data, (ATTACKER, 5080), "127.0.0.1", 1.0 + n / 1000)
        assert out.reply is not None and len(out.reply) <= len(data)
        sent += len(out.reply)
    print(f"\n1,500 large SUBSCRIBEs: {sent} bytes of answers, cache holds {core.cache_bytes()} "
          f"(budget {budget}), {core.cache_evicted()} evicted")
    assert core.cache_bytes() <= budget
    assert core.cache_evicted() > 1_000
    # a real phone that boots after the flood is answered and discovered
    phone = core.handle(GRANDSTREAM, ("127.0.0.2", 5080), "127.0.0.1", 3.0)
    assert phone.verdict == "answered" and phone.discovered is not None


RSS_SCRIPT = textwrap.dedent("""
    import sys
    from listener.discovery import SubscribeCore
    from tests.test_attack_net import large_subscribe

    def rss_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    core = SubscribeCore(secret=b"k" * 16, rate=1e9, burst=1e9, cache_bytes=int(sys.argv[1]))
    datagrams = [large_subscribe(n) for n in range(1_500)]
    before = rss_mib()
    for n, data in enumerate(datagrams):
        core.handle(data, ("127.0.0.66", 5080), "127.0.0.1", 1.0 + n / 1000)
    print(f"{before:.0f} {rss_mib():.0f} {core.cache_bytes()}")
""")


def test_rss_after_1500_large_subscribes_before_and_after_the_byte_bound():
    def run(budget: int) -> tuple[float, float, int]:
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(budget)],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        out = done.stdout.split()
        return float(out[0]), float(out[1]), int(out[2])

    unbounded = run(1 << 36)  # as before: bounded in entries only
    bounded = run(16 << 20)
    print(f"\nRSS MiB before -> after 1,500 large SUBSCRIBEs: entries-only {unbounded[0]:.0f} -> "
          f"{unbounded[1]:.0f} (cache {unbounded[2] >> 20} MiB); 16 MiB bound {bounded[0]:.0f} -> "
          f"{bounded[1]:.0f} (cache {bounded[2] >> 20} MiB)")
    assert bounded[2] <= 16 << 20 < unbounded[2]
    assert bounded[1] - bounded[0] < unbounded[1] - unbounded[0]


class ListenerAttackTest(BrokerCase):
    probe_topics = test_listener.ListenerTest.probe_topics
    timeout = 30

    def setUp(self) -> None:
        super().setUp()
        self.sip_port = free_udp_port()

    start_listener = test_listener.ListenerTest.start_listener
    phone = test_listener.ListenerTest.phone

    @defer.inlineCallbacks
    def test_via_bomb_over_real_sockets_gets_nothing_back_the_phone_its_answer(self):
        rt = yield self.start_listener()
        attacker = self.phone(ATTACKER, "000b82f5aaaa")
        phone = self.phone("127.0.0.2", "000b82f55284")
        attacker.send(via_bomb(attacker.subscribe_bytes("z9hG4bKbomb"), 3800), self.sip_port)
        phone.send(phone.subscribe_bytes("z9hG4bKok"), self.sip_port)
        yield eventually(lambda: phone.replies and rt.component.counters()["amplifying"] == 1)
        yield task.deferLater(reactor, 0.3, lambda: None)  # an answer would have come by now
        self.assertEqual(attacker.replies, [])
        self.assertEqual(parse(phone.replies[0][0]).status, 200)
        yield eventually(lambda: self.probe.on(rt.topics.device(phone.mac, "discovered")))
        self.assertEqual(self.probe.on(rt.topics.device(attacker.mac, "discovered")), [])

    @defer.inlineCallbacks
    def test_large_subscribes_over_real_sockets_keep_the_cache_in_its_bytes(self):
        budget = 1 << 20
        rt = yield self.start_listener(sip_cache_bytes=str(budget), sip_rate="100000",
                                       sip_burst="100000")
        attacker = self.phone(ATTACKER, "000b82f5aaaa")
        for n in range(200):
            attacker.send(large_subscribe(n, pad=8_000), self.sip_port)
            if n % 20 == 19:  # in steps, so that no datagram is lost to a full socket buffer
                yield eventually(lambda: rt.component.counters()["received"] > n)
        yield eventually(lambda: rt.component.counters()["received"] == 200)
        counters = rt.component.counters()
        self.assertLessEqual(counters["cache_bytes"], budget)
        self.assertGreater(counters["cache_evicted"], 0)

    @defer.inlineCallbacks
    def test_discoveries_of_invented_macs_expire_on_the_broker_a_served_phones_stays(self):
        rt = yield self.start_listener(discovery_ttl="2")
        phone = self.phone("127.0.0.2", "000b82f55284")
        invented = [self.phone(ATTACKER, f"000b82f5{n:04x}") for n in range(3)]
        phone.send(phone.subscribe_bytes("z9hG4bKok"), self.sip_port)
        for n, fake in enumerate(invented):
            fake.send(fake.subscribe_bytes(f"z9hG4bKfake{n}"), self.sip_port)
        mine = rt.topics.device(phone.mac, "discovered")
        yield eventually(lambda: len(self.probe.messages) >= 4)
        # the fileserver served the phone its file: from now on its discovery is for good
        self.probe.publish(rt.topics.device(phone.mac, "fetched"),
                           {"file": "x", "sha256": "0", "status": 200, "client": phone.address,
                            "user_agent": "", "provisioned": False, "at": "2026-11-29T00:00:00Z",
                            "revision": 1, "server": "s", "v": 1}, retain=True)
        yield eventually(lambda: rt.ctx.counters.get("discoveries_kept") == 1)
        self.assertEqual(len(set(self.probe.on(mine))), 1, "the same bytes again")
        yield task.deferLater(reactor, 3.5, lambda: None)  # past the 2 s TTL
        late = Probe(self.broker.url, "pnp/devices/+/discovered")
        self.addCleanup(late.close)
        yield task.deferLater(reactor, 0.5, lambda: None)  # the retained replay is in by then
        self.assertEqual([topic for topic, _, _ in late.messages], [mine])
        self.assertEqual(rt.ctx.counters.get("discoveries_expired"), 3)
        # the broker dropped them by itself: nobody cleared them
        self.assertNotIn(b"", [payload for _, payload, _ in self.probe.messages])


class NotifierAttackTest(test_notifier.NotifierBase):
    """A discovery as a spoofed SUBSCRIBE leaves it: ip and port of a host that never asked."""

    @defer.inlineCallbacks
    def test_a_spoofed_source_gets_four_notifies_not_eleven_and_only_at_its_own_address(self):
        victim = self.phone("127.0.0.77", status=None)  # never answers: it sent nothing
        elsewhere = self.phone("127.0.0.99", status=None)
        component = yield self.start()  # T1 = 10 ms: Timer F 640 ms, for the unproven 80 ms
        self.publish()
        # the Contact names another host: the NOTIFY still goes to the source address only
        self.discover(victim, contact=f"<sip:127.0.0.99:{elsewhere.address[1]}>")
        status = yield eventually(self.final(), timeout=5)
        self.assertEqual((status["status"], status["attempts"]), ("timeout", 4))
        self.assertEqual(len(victim.requests), 4)
        self.assertEqual(elsewhere.requests, [])
        sent = sum(len(r.to_bytes()) for r in victim.requests)
        full = component.timers.f
        print(f"\nNOTIFYs to a spoofed source: {len(victim.requests)} ({sent} bytes) within "
              f"{component.unproven_timers.f / component.timers.t1:.0f} T1; "
              f"before: 11 ({sent * 11 // 4} bytes) within {full / component.timers.t1:.0f} T1; "
              f"per {len(GRANDSTREAM)}-byte SUBSCRIBE: x{sent / len(GRANDSTREAM):.1f}")
        self.assertEqual(self.runtimes[0].ctx.counters["notify_unproven"], 1)

    @defer.inlineCallbacks
    def test_a_provisioned_mac_is_no_pass_for_a_spoofed_source_its_own_address_is(self):
        phone = self.phone("127.0.0.2", status=None)  # it downloads from 127.0.0.2 (fetched)
        victim = self.phone("127.0.0.77", status=None)
        yield self.running(phone)
        self.publish()
        self.discover(victim, call_id="spoofed@127.0.0.77")
        status = yield eventually(self.final(), timeout=5)
        self.assertEqual((status["status"], status["attempts"]), ("timeout", 4))
        self.assertEqual(len(victim.requests), 4)
        self.discover(phone, call_id="reboot@127.0.0.2", seen_at=now_iso())
        status = yield eventually(lambda: next((s for s in self.statuses()
                                                if s["call_id"] == "reboot@127.0.0.2"
                                                and s["status"] != "sent"), None), timeout=5)
        self.assertEqual((status["status"], status["attempts"]), ("timeout", 11))
