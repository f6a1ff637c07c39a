"""The listener's outbox against a real bus and broker: windowed, coalesced, bounded."""

from __future__ import annotations

import contextlib

from twisted.internet import defer, reactor, task

from listener.outbox import Outbox
from services.mqtt import Bus
from services.settings import parse_mqtt_url
from tests.support import BrokerCase, eventually


class OutboxTest(BrokerCase):
    probe_topics = "pnp/devices/+/discovered"

    timeout = 20

    def setUp(self) -> None:
        super().setUp()
        self.bus = Bus(parse_mqtt_url(self.broker.url), "test-outbox", reactor, backoff_initial=0.05,
                       backoff_max=0.2)
        self.addCleanup(self.bus.stop)

    @defer.inlineCallbacks
    def test_everything_arrives_with_a_bounded_window_in_flight(self):
        self.bus.start()
        yield self.bus.when_connected()
        outbox = Outbox(self.bus, reactor, window=8)
        self.addCleanup(outbox.cancel)
        in_flight = []
        sampler = task.LoopingCall(lambda: in_flight.append(self.bus.queued))
        sampler.start(0.001)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        for i in range(300):
            outbox.put(f"pnp/devices/{i:012x}/discovered", b'{"n":%d}' % i)
        self.assertEqual(self.bus.queued, 0, "nothing is sent while the datagrams are handled")
        yield eventually(lambda: len(self.probe.messages) == 300)
        self.assertLessEqual(max(in_flight), 8)
        self.assertEqual(len(outbox), 0)

    @defer.inlineCallbacks
    def test_a_full_window_drains_on_the_acknowledgement_not_a_poll(self):
        # With the poll an hour away, only PUBACKs can move the queue along: one discovery at
        # a time, each sent as the one before it is acknowledged.
        self.bus.start()
        yield self.bus.when_connected()
        outbox = Outbox(self.bus, reactor, window=1, retry=3600.0)
        self.addCleanup(outbox.cancel)
        for i in range(50):
            outbox.put(f"pnp/devices/{i:012x}/discovered", b'{"n":%d}' % i)
        yield eventually(lambda: len(self.probe.messages) == 50)
        self.assertEqual(len(outbox), 0)

    @defer.inlineCallbacks
    def test_waits_for_the_broker_coalesces_per_phone_and_drops_past_its_bound(self):
        outbox = Outbox(self.bus, reactor, window=8, max_pending=10)
        self.addCleanup(outbox.cancel)
        for i in range(3):  # one phone, three boots: only the last matters (retained)
            outbox.put("pnp/devices/000b82f55284/discovered", b'{"boot":%d}' % (i + 1))
        for i in range(12):
            outbox.put(f"pnp/devices/{i:012x}/discovered", b"{}")
        self.assertEqual((len(outbox), outbox.coalesced, outbox.dropped), (10, 2, 3))
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(outbox), 10, "no broker yet: they wait")
        self.bus.start()
        yield eventually(lambda: len(self.probe.messages) == 10)
        self.assertEqual(self.probe.json_on("pnp/devices/000b82f55284/discovered"), [{"boot": 3}])


class _CountingBus:
    connected = True
    queued = 0

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic, payload, retain=False, qos=1, expiry=None):
        self.messages.append((topic, payload))
        return True

    def on_connect(self, callback):
        pass

    def on_acknowledged(self, callback):
        pass

    def batch(self):  # the real bus writes a batch's publishes at its end
        return contextlib.nullcontext()


class _Transport:
    def __init__(self, events: list) -> None:
        self.events = events

    def write(self, data, addr):
        self.events.append(("answer", addr))


def _burst(connected: bool, read_done: bool = False, ports: list | None = None):
    """A listener core, service and protocol on a Clock with a bus that only counts; 20 new
    phones' SUBSCRIBEs in one read; what happened, in order, before and after the turn ends."""
    from collections import Counter
    from types import SimpleNamespace

    from twisted.logger import globalLogPublisher

    from listener.discovery import SubscribeCore
    from listener.protocol import SubscribeProtocol
    from listener.service import ListenerService
    from services.topics import Topics
    from tests.test_sip_message import GRANDSTREAM

    clock = task.Clock()
    bus = _CountingBus()
    bus.connected = connected
    ctx = SimpleNamespace(name="listener", bus=bus, topics=Topics("pnp"), reactor=clock,
                          counters=Counter(), settings=SimpleNamespace(
                              sip_port=5060, publish_window=16, discovery_ttl=0, instance="t"))
    service = ListenerService(ctx, SubscribeCore(rate=1e9, burst=1e9))
    service.ports = ports or []
    events: list = []
    protocol = SubscribeProtocol(service.core, "192.168.5.110", clock, service._publish,
                                 service.times)
    protocol.transport = _Transport(events)

    def logged(event):
        if "discovered" in event.get("log_format", ""):
            events.append(("log", event.get("mac")))

    globalLogPublisher.addObserver(logged)
    try:
        for i in range(20):
            mac = f"000B82{i:06X}"
            data = GRANDSTREAM.replace(b"000B82F55284", mac.encode()).replace(
                b"1848599395-5080-1", b"%d-5080-1" % i)
            protocol.datagramReceived(data, (f"192.168.5.{i + 1}", 5080))
        during = (list(events), list(bus.messages), dict(service.keeper.prints))
        if read_done:  # what AnsweringPort does once the socket has no datagram left
            publish = bus.publish

            def recorded(topic, payload, **options):
                events.append(("published", topic))
                return publish(topic, payload, **options)

            bus.publish = recorded
            protocol.on_read_done = service._read_done
            protocol.readDone()
            bus.at_read_end = len(bus.messages)
        for _ in range(10):
            clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(logged)
    service.outbox.cancel()
    return during, events, bus


def test_while_the_broker_is_away_booting_phones_are_still_logged_at_once():
    _, events, bus = _burst(connected=False)
    assert [kind for kind, _ in events] == ["answer"] * 20 + ["log"] * 20
    assert bus.messages == []


def test_a_burst_is_answered_before_any_discovery_is_made_logged_or_published():
    # Twisted hands a socket's waiting datagrams over in one loop: every phone in it must get
    # its 200 OK before the listener spends anything on discoveries (protocol.py says why).
    from services.messages import Discovered

    (events, published, kept), after, bus = _burst(connected=True)
    assert [kind for kind, _ in events] == ["answer"] * 20
    assert published == [] and kept == {}
    assert len(bus.messages) == 20
    assert [kind for kind, _ in after[20:]] == ["log"] * 20  # one line each, below the burst cap
    topic, payload = bus.messages[0]
    found = Discovered.from_json(payload)
    assert topic == "pnp/devices/000b82000000/discovered"
    assert (found.mac, found.vendor, found.model, found.ip) == ("000b82000000", "grandstream",
                                                                "GRP2614", "192.168.5.1")


def test_when_the_read_is_over_its_discoveries_are_published_in_the_same_turn():
    # No wait for the reactor's next turn once every waiting datagram is answered: the first
    # batch of discoveries goes at once, then the log lines; the rest of the burst follows on
    # the next turns, as before.
    (events, published, _), after, bus = _burst(connected=True, read_done=True)
    assert [kind for kind, _ in events] == ["answer"] * 20
    assert published == []
    kinds = [kind for kind, _ in after]
    assert kinds[:20] == ["answer"] * 20
    assert kinds[20:28] == ["published"] * 8 and bus.at_read_end == 8, (
        "the read's first batch did not go at its end")
    assert kinds[28:48] == ["log"] * 20
    assert kinds[48:] == ["published"] * 12 and len(bus.messages) == 20


def test_with_another_interface_s_datagrams_waiting_the_discoveries_wait_for_them():
    # Two interface sockets, a SUBSCRIBE still unread on the other one: the read that ended
    # leaves its discoveries to the next turn, so that SUBSCRIBE is answered first.
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        sockets[0].sendto(b"SUBSCRIBE", sockets[1].getsockname())
        (_, _, _), after, bus = _burst(connected=True, read_done=True, ports=sockets)
    finally:
        for sock in sockets:
            sock.close()
    assert bus.at_read_end == 0, "published before the other socket's datagram was read"
    assert len(bus.messages) == 20, "and not on the next turn either"


def test_a_failure_after_the_read_costs_a_log_line_not_the_socket():
    # Raised out of the port's doRead, an error would make Twisted close the port, and the
    # listener would stop hearing phones for good.
    import socket

    from twisted.internet.epollreactor import EPollReactor
    from twisted.logger import globalLogPublisher

    from listener.discovery import SubscribeCore
    from listener.protocol import AnsweringPort, SubscribeProtocol
    from services.sip.message import MAX_DATAGRAM

    poller = EPollReactor()  # never run: doRead is called as it would call it
    heard: list = []

    def broken() -> None:
        raise RuntimeError("a bug in making a discovery")

    protocol = SubscribeProtocol(SubscribeCore(), "127.0.0.1", poller, heard.append,
                                 on_read_done=broken)
    protocol.datagramReceived = lambda data, addr: heard.append(data)  # type: ignore[method-assign]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    failures: list = []
    observer = lambda event: event.get("log_failure") and failures.append(event)  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        port = AnsweringPort.adopt(poller, sock.fileno(), socket.AF_INET, protocol, MAX_DATAGRAM)
        for n in range(2):
            sender.sendto(b"SUBSCRIBE %d" % n, sock.getsockname())
            port.doRead()
        assert heard == [b"SUBSCRIBE 0", b"SUBSCRIBE 1"] and port.connected
        assert len(failures) == 2
        port.stopListening()
    finally:
        globalLogPublisher.removeObserver(observer)
        sock.close()
        sender.close()
