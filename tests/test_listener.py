"""The listener on real sockets and a real broker (NETWORK-SAFETY.md: loopback only).

Simulated phones sit on their own addresses 127.0.0.2, 127.0.0.3 ... and multicast their
SUBSCRIBE to 224.0.1.75 with IP_MULTICAST_IF=127.0.0.1 and TTL 0; the listener joins the group
on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import json
import os
import socket
import struct

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher, formatEvent

from listener import main as listener_main
from listener.multicast import GROUP
from services.runner import Runtime
from services.sip.message import Response, parse, parse_name_addr, parse_via
from tests.support import BrokerCase, Probe, eventually, make_settings
from tests.test_sip_message import GRANDSTREAM


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phone(DatagramProtocol):
    """A phone's firmware, as far as PnP goes: multicast a SUBSCRIBE, collect the answers."""

    def __init__(self, address: str, mac: str, multicast_if: str = "127.0.0.1") -> None:
        self.address = address
        self.mac = mac
        self.replies: list[tuple[bytes, tuple[str, int]]] = []
        self.port = reactor.listenUDP(0, self, interface=address)
        sock = self.port.socket
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(multicast_if))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.local_port = self.port.getHost().port

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.append((data, addr))

    def subscribe_bytes(self, branch: str, call_id: str = "") -> bytes:
        data = GRANDSTREAM.replace(b"000B82F55284", self.mac.upper().encode())
        data = data.replace(b"192.168.5.175:5080", f"{self.address}:{self.local_port}".encode())
        data = data.replace(b"z9hG4bK1686351121", branch.encode())
        return data.replace(b"1848599395-5080-1@BJC.BGI.F.BHF",
                            (call_id or f"boot-{self.mac}@{self.address}").encode())

    def send(self, data: bytes, sip_port: int) -> None:
        self.port.write(data, (GROUP, sip_port))

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


class ListenerTest(BrokerCase):
    probe_topics = ["pnp/devices/+/discovered", "pnp/services/#"]

    timeout = 30

    def setUp(self) -> None:
        super().setUp()
        self.sip_port = free_udp_port()

    @defer.inlineCallbacks
    def start_listener(self, **values: str):
        settings = make_settings(self.broker, self.mktemp(), extra=listener_main.SETTINGS,
                                 sip_port=str(self.sip_port), **values)
        rt = Runtime("listener", settings, listener_main.start, reactor)
        yield rt.start()
        self.addCleanup(rt.stop)
        yield rt.bus.when_connected()
        return rt

    def phone(self, address: str, mac: str) -> Phone:
        p = Phone(address, mac)
        self.addCleanup(p.stop)
        return p

    @defer.inlineCallbacks
    def test_phones_answered_at_their_own_ports_one_retained_discovery_each(self):
        logged: list[str] = []

        def observe(event):
            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        rt = yield self.start_listener()
        self.assertTrue(any(f"joined {GROUP} on 127.0.0.1, port {self.sip_port}" in line for line in logged))
        self.assertTrue(any("PNP_SIP_INTERFACE" in line for line in logged), "how to serve a LAN")

        phones = [self.phone(f"127.0.0.{i + 2}", f"000b82f5{i:04x}") for i in range(3)]
        for phone in phones:
            # as at boot: a retransmission, then new transactions of the same subscription
            for branch in ["z9hG4bKa", "z9hG4bKa", "z9hG4bKb", "z9hG4bKc", "z9hG4bKd"]:
                phone.send(phone.subscribe_bytes(branch), self.sip_port)
        yield eventually(lambda: all(len(p.replies) == 5 for p in phones))

        topics = [rt.topics.device(p.mac, "discovered") for p in phones]
        yield eventually(lambda: all(self.probe.on(t) for t in topics))
        yield task.deferLater(reactor, 0.3, lambda: None)  # anything more would have come by now
        for phone, topic in zip(phones, topics):
            tags = set()
            for data, source in phone.replies:
                self.assertEqual(source, ("127.0.0.1", self.sip_port))
                reply = parse(data)
                self.assertIsInstance(reply, Response)
                self.assertEqual(reply.status, 200)
                self.assertEqual(parse_via(reply.headers.get("Via")).params["rport"], str(phone.local_port))
                tags.add(parse_name_addr(reply.headers.get("To")).tag)
            self.assertEqual(len(tags), 1)
            self.assertEqual(len(self.probe.on(topic)), 1, "one discovery per boot")
            d = self.probe.last(topic)
            self.assertEqual((d["mac"], d["ip"], d["port"], d["interface"], d["to_tag"], d["boot"]),
                             (phone.mac, phone.address, phone.local_port, "127.0.0.1", tags.pop(), 1))
            self.assertEqual((d["vendor"], d["model"], d["firmware"]), ("grandstream", "GRP2614", "1.0.0.31"))

        # retained: a system that connects later still learns every phone
        late = Probe(self.broker.url, "pnp/devices/+/discovered")
        self.addCleanup(late.close)
        yield eventually(lambda: len(late.messages) == 3)
        self.assertTrue(all(retained for _, _, retained in late.messages))
        counters = rt.component.counters()
        self.assertEqual((counters["received"], counters["answered"], counters["published"],
                          counters["retransmissions"], counters["duplicates"]), (15, 15, 3, 3, 9))

    @defer.inlineCallbacks
    def test_port_is_shared_with_a_pbx_on_the_same_host(self):
        pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(pbx.close)
        pbx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        pbx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        pbx.bind(("0.0.0.0", self.sip_port))
        pbx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                       struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1")))
        pbx.setblocking(False)
        rt = yield self.start_listener()
        phone = self.phone("127.0.0.2", "000b82f55284")
        phone.send(phone.subscribe_bytes("z9hG4bKx"), self.sip_port)
        yield eventually(lambda: phone.replies)

        def pbx_got():
            try:
                return pbx.recvfrom(65535)
            except BlockingIOError:
                return None

        got = yield eventually(pbx_got)
        self.assertEqual(got[1], ("127.0.0.2", phone.local_port))
        # the PBX's own unicast traffic on that port stays the PBX's
        before = rt.component.counters()["received"]
        phone.port.write(b"OPTIONS for the PBX", ("127.0.0.1", self.sip_port))
        got = yield eventually(pbx_got)
        self.assertEqual(got[0], b"OPTIONS for the PBX")
        self.assertEqual(rt.component.counters()["received"], before)

    @defer.inlineCallbacks
    def test_garbage_and_floods_leave_it_answering_and_are_counted(self):
        rt = yield self.start_listener(sip_rate="20", sip_burst="40")
        attacker = self.phone("127.0.0.9", "000000000000")
        attacker.send(os.urandom(65507), self.sip_port)
        attacker.send(GRANDSTREAM[:321], self.sip_port)
        attacker.send(GRANDSTREAM.replace(b"Expires: 0\r\n", b"X-A: b\r\n" * 5000), self.sip_port)
        attacker.send(b"\r\n\r\n", self.sip_port)
        yield eventually(lambda: rt.component.counters()["malformed"] == 4)

        flooder = self.phone("127.0.0.10", "000b82aaaaaa")
        for i in range(300):
            flooder.send(flooder.subscribe_bytes(f"z9hG4bKflood{i}", call_id=f"f{i}"), self.sip_port)
        yield eventually(lambda: rt.component.counters()["rate_limited"] > 0)

        phone = self.phone("127.0.0.11", "000b82bbbbbb")
        phone.send(phone.subscribe_bytes("z9hG4bKok"), self.sip_port)
        yield eventually(lambda: phone.replies)
        self.assertEqual(parse(phone.replies[0][0]).status, 200)
        self.assertLessEqual(len(flooder.replies), 41)
        flood_topic = rt.topics.device("000b82aaaaaa", "discovered")
        yield eventually(lambda: self.probe.on(flood_topic))
        self.assertEqual(len(self.probe.on(flood_topic)), 1, "a flood of one phone is one discovery")

        # the counters go out in the service status
        rt.publish_status()
        status_topic = rt.topics.service("listener", "test")

        def counted():
            status = self.probe.last(status_topic)
            return status and status["counters"].get("rate_limited", 0) > 0 and status

        status = yield eventually(counted)
        for name in ("received", "answered", "published", "malformed", "rate_limited", "duplicates"):
            self.assertIn(name, status["counters"])
        self.assertEqual(status["counters"]["malformed"], 4)

    @defer.inlineCallbacks
    def test_a_60_kb_subscribe_is_read_whole_and_answered(self):
        rt = yield self.start_listener()
        phone = self.phone("127.0.0.2", "000b82f55284")
        data = phone.subscribe_bytes("z9hG4bKbig").replace(
            b"Expires: 0\r\n", b"Expires: 0\r\nX-Pad: " + b"p" * 60000 + b"\r\n")
        self.assertGreater(len(data), 60000)
        phone.send(data, self.sip_port)
        yield eventually(lambda: phone.replies)
        self.assertEqual(parse(phone.replies[0][0]).status, 200)
        counters = rt.component.counters()
        self.assertEqual((counters["received"], counters["answered"], counters["malformed"]), (1, 1, 0))
        yield eventually(lambda: self.probe.on(rt.topics.device(phone.mac, "discovered")))

    @defer.inlineCallbacks
    def test_a_subscribe_with_a_bare_cr_in_a_header_is_dropped_unanswered(self):
        rt = yield self.start_listener()
        phone = self.phone("127.0.0.3", "000b82f55285")
        good = phone.subscribe_bytes("z9hG4bKok", call_id="ok@127.0.0.3")
        hostile = [
            phone.subscribe_bytes("z9hG4bKcr1", call_id="x\rSIP/2.0 200 OK"),  # the case
            good.replace(b"From: <sip:", b"From: \"\rEvil\" <sip:").replace(b"z9hG4bKok", b"z9hG4bKcr2"),
            good.replace(b"branch=z9hG4bKok", b"branch=z9hG4bKcr3\rX: y"),
            good.replace(b"Content-Length: 0", b"User-Agent: a\rb\r\nContent-Length: 0"),
        ]
        for data in hostile:
            phone.send(data, self.sip_port)
        yield eventually(lambda: rt.component.counters()["unsafe_header"] == len(hostile))
        # the same phone, a clean SUBSCRIBE after them: its answer is the only one
        phone.send(good, self.sip_port)
        yield eventually(lambda: phone.replies)
        self.assertEqual(len(phone.replies), 1)
        self.assertEqual(parse(phone.replies[0][0]).call_id, "ok@127.0.0.3")
        discovered = yield eventually(lambda: self.probe.json_on(rt.topics.device(phone.mac, "discovered")))
        self.assertEqual([d["call_id"] for d in discovered], ["ok@127.0.0.3"])
        self.assertEqual(rt.component.counters()["malformed"], 0)

    @defer.inlineCallbacks
    def test_answers_while_the_broker_is_away_and_publishes_on_reconnect(self):
        rt = yield self.start_listener()
        self.broker.stop()
        yield eventually(lambda: not rt.bus.connected)
        phone = self.phone("127.0.0.12", "000b82cccccc")
        phone.send(phone.subscribe_bytes("z9hG4bKaway"), self.sip_port)
        yield eventually(lambda: phone.replies)
        self.assertEqual(parse(phone.replies[0][0]).status, 200)
        tag = parse_name_addr(parse(phone.replies[0][0]).headers.get("To")).tag

        self.broker.start()
        probe = Probe(self.broker.url, "pnp/devices/+/discovered")
        self.addCleanup(probe.close)
        topic = rt.topics.device("000b82cccccc", "discovered")
        yield eventually(lambda: probe.on(topic), timeout=15)
        self.assertEqual(json.loads(probe.on(topic)[0])["to_tag"], tag)

    @defer.inlineCallbacks
    def test_a_restarted_listener_remembers_the_boots_it_published(self):
        rt = yield self.start_listener()
        phone = self.phone("127.0.0.14", "000b82eeeeee")
        topic = rt.topics.device(phone.mac, "discovered")
        phone.send(phone.subscribe_bytes("z9hG4bKr1"), self.sip_port)
        yield eventually(lambda: self.probe.on(topic))
        yield rt.stop()

        rt = yield self.start_listener()
        yield eventually(lambda: rt.component.core.boots(phone.mac) == 1)
        # a late SUBSCRIBE of the boot already published: answered, not published again
        phone.send(phone.subscribe_bytes("z9hG4bKr2"), self.sip_port)
        yield eventually(lambda: len(phone.replies) == 2)
        # the next boot is boot 2
        phone.send(phone.subscribe_bytes("z9hG4bKr3", call_id="second-boot@127.0.0.14"), self.sip_port)
        yield eventually(lambda: len(self.probe.on(topic)) == 2)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([d["boot"] for d in self.probe.json_on(topic)], [1, 2])
        # done learning, it no longer hears its own discoveries: a storm costs no decoding
        yield eventually(lambda: not rt.component.learning)
        received = rt.bus.counters["mqtt_received"]
        other = self.phone("127.0.0.15", "000b82ffffff")
        other.send(other.subscribe_bytes("z9hG4bKr4"), self.sip_port)
        yield eventually(lambda: self.probe.on(rt.topics.device(other.mac, "discovered")))
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(rt.bus.counters["mqtt_received"], received)

    @defer.inlineCallbacks
    def test_202_when_set(self):
        yield self.start_listener(subscribe_response="202")
        phone = self.phone("127.0.0.13", "000b82dddddd")
        phone.send(phone.subscribe_bytes("z9hG4bK202"), self.sip_port)
        yield eventually(lambda: phone.replies)
        reply = parse(phone.replies[0][0])
        self.assertEqual((reply.status, reply.headers.get("Expires")), (202, "0"))
