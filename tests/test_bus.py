"""The MQTT bus against a real mosquitto: round trips, retained state, reconnects, bad handlers."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest

from services import bus as bus_module
from services.bus import Bus, Incoming
from services.settings import parse_mqtt_url
from tests.support import BrokerCase, Probe, eventually


class BusTest(BrokerCase):
    persistence = True
    probe_topics = None

    def setUp(self) -> None:
        super().setUp()
        self.buses: list[Bus] = []

    def bus(self, name: str = "t") -> Bus:
        b = Bus(parse_mqtt_url(self.broker.url), f"test-{name}", reactor, backoff_initial=0.05,
                backoff_max=0.5)
        self.buses.append(b)
        self.addCleanup(b.stop)
        b.start()
        return b

    @defer.inlineCallbacks
    def test_round_trip_and_retained(self) -> None:
        got = []
        sender = self.bus("sender")
        yield sender.when_connected()
        sender.publish_json("pnp/devices/000b82f55284/discovered", {"mac": "000b82f55284"}, retain=True)
        yield sender.flush()
        # A subscriber that arrives later still sees the retained message, parsed.
        receiver = self.bus("receiver")
        receiver.subscribe("pnp/devices/+/discovered", got.append)
        yield eventually(lambda: got)
        self.assertEqual(got[0].data, {"mac": "000b82f55284"})
        self.assertTrue(got[0].retain)

    @defer.inlineCallbacks
    def test_a_burst_is_handled_a_batch_per_reactor_turn(self) -> None:
        """A handler that publishes (as the notifier does) must not keep the reactor in one
        read for the whole burst: timers and other sockets get a turn every READ_BATCH."""
        from collections import Counter

        from services.bus import READ_BATCH

        turn = [0]
        per_turn: Counter = Counter()
        got: list[str] = []

        def tick() -> None:
            turn[0] += 1
            if len(got) < 1500:
                reactor.callLater(0, tick)

        receiver = self.bus("receiver")

        def handle(msg) -> None:
            got.append(msg.topic)
            per_turn[turn[0]] += 1
            receiver.publish(f"done/{msg.topic}", b"1")

        receiver.subscribe("burst/#", handle)
        yield receiver.when_subscribed()
        sender = self.bus("sender")
        yield sender.when_connected()
        tick()
        for i in range(1500):
            sender.publish(f"burst/{i}", b"x")
        yield eventually(lambda: len(got) == 1500, timeout=20)
        self.assertEqual(got, [f"burst/{i}" for i in range(1500)])
        # one batch when the socket is readable, one carried over from the turn before
        self.assertLessEqual(max(per_turn.values()), 2 * READ_BATCH, per_turn.most_common(3))
        self.assertGreater(len(per_turn), 1500 / (2 * READ_BATCH))

    @defer.inlineCallbacks
    def test_bad_json_reaches_handler_with_error(self) -> None:
        got = []
        b = self.bus()
        b.subscribe("x/#", got.append)
        yield b.when_subscribed()
        probe = Probe(self.broker.url, "nothing")
        self.addCleanup(probe.close)
        probe.publish("x/1", b"{not json")
        probe.publish("x/2", b"")
        yield eventually(lambda: len(got) == 2)
        self.assertIn("not JSON", got[0].error)
        self.assertIsNone(got[0].data)
        self.assertTrue(got[1].empty)
        self.assertIsNone(got[1].error)

    @defer.inlineCallbacks
    def test_handler_that_raises_does_not_stop_later_messages(self) -> None:
        got = []

        def bad(msg):
            raise RuntimeError("boom")

        b = self.bus()
        b.subscribe("x/#", bad)
        b.subscribe("x/#", got.append)
        yield b.when_subscribed()
        for i in range(5):
            b.publish(f"x/{i}", json.dumps(i))
        yield eventually(lambda: len(got) == 5)
        self.assertEqual([m.data for m in got], [0, 1, 2, 3, 4])
        self.assertEqual(b.counters["mqtt_handler_errors"], 5)
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_reconnects_resubscribes_and_delivers_what_was_published_meanwhile(self) -> None:
        got = []
        receiver = self.bus("receiver")
        receiver.subscribe("load/#", lambda m: got.append(m.data))
        sender = self.bus("sender")
        yield receiver.when_subscribed()
        yield sender.when_connected()
        for i in range(50):
            sender.publish(f"load/{i}", json.dumps(i), retain=True)
        yield eventually(lambda: len(got) == 50)

        self.broker.kill()
        yield eventually(lambda: not sender.connected and not receiver.connected)
        # Published while the broker is away: queued, not lost.
        for i in range(50, 100):
            sender.publish(f"load/{i}", json.dumps(i), retain=True)
        self.assertEqual(sender.counters["mqtt_queue_overflow"], 0)
        self.broker.start()
        yield eventually(lambda: sender.connected and receiver.connected, timeout=10)
        yield eventually(lambda: set(range(100)) <= set(got), timeout=10)
        self.assertEqual(receiver.counters["mqtt_connects"], 2)

    @defer.inlineCallbacks
    def test_full_queue_is_counted_not_silent(self) -> None:
        b = Bus(parse_mqtt_url(self.broker.url), "test-small", reactor, max_queued=10)
        self.addCleanup(b.stop)
        self.broker.kill()
        b.start()
        results = [b.publish(f"q/{i}", b"1") for i in range(15)]
        self.assertEqual(results.count(False), 5)
        self.assertEqual(b.counters["mqtt_queue_overflow"], 5)
        yield defer.succeed(None)


def test_subscription_matching_is_paho_s():
    """The bus's own topic matcher agrees with paho's on every filter and topic shape."""
    import itertools

    import paho.mqtt.client as mqtt

    from services.bus import _Subscription

    filters = ["#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/+/c", "a/b/#", "+/#",
               "pnp/devices/+/discovered", "$SYS/#", "$SYS/+", "/a", "a/", "+/+/+", "//", "/#"]
    topics = ["a", "a/b", "a/c", "a/b/c", "b/b", "a/b/c/d", "$SYS/x", "$SYS", "/a", "a/", "",
              "/", "//", "pnp/devices/000b82f55284/discovered", "pnp/devices/x/published"]
    for f, topic in itertools.product(filters, topics):
        assert _Subscription(f, 1).matches(topic) == mqtt.topic_matches_sub(f, topic), (f, topic)


class RefusedPublishTest(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_publish_the_broker_refuses_is_counted_not_taken_for_success(self):
        from pathlib import Path

        from services.broker import Mosquitto

        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        acl = directory / "acl"
        acl.write_text("topic readwrite allowed/#\n")  # the anonymous login's only topics
        # run as root (as the tests are) so the broker can read the test's private directory
        broker = Mosquitto(directory, extra_config=f"acl_file {acl}\nuser root").start()
        self.addCleanup(broker.stop)
        b = Bus(parse_mqtt_url(broker.url), "test-refused", reactor)
        self.addCleanup(b.stop)
        got = []
        b.subscribe("allowed/#", got.append)
        b.start()
        yield b.when_subscribed()
        b.publish("forbidden/x", b"1")
        b.publish("allowed/x", b"2")
        yield eventually(lambda: got)
        yield b.flush()
        self.assertEqual(b.counters["mqtt_publish_refused"], 1)
        self.assertEqual([m.raw for m in got], [b"2"])


def test_incoming_parses_its_payload_only_when_asked_and_keeps_given_values():
    lazy = Incoming("x/1", b'{"a":1}', False)
    assert lazy._data is bus_module._UNPARSED  # nothing parsed until asked
    assert lazy.data == {"a": 1} and lazy.error is None
    bad = Incoming("x/2", b"{nope", False)
    assert bad.error is not None and "not JSON" in bad.error and bad.data is None
    empty = Incoming("x/3", b"", True)
    assert empty.empty and empty.data is None and empty.error is None
    given = Incoming("x/4", b"ignored", False, data={"b": 2})
    assert given.data == {"b": 2} and given.error is None
    given.error = "why"
    assert given.error == "why" and given == Incoming("x/4", b"ignored", False, {"b": 2}, "why")


def test_packets_of_one_turn_go_out_joined_except_those_paho_must_see_finish():
    from collections import deque

    from services.bus import _coalesce

    class Client:
        _out_packet: deque = deque()

    def packet(command: int, data: bytes, qos: int = 1, pos: int = 0) -> dict:
        return {"command": command, "mid": 1, "qos": qos, "pos": pos, "to_process": len(data) - pos,
                "packet": data, "info": None}

    client = Client()
    partly_sent = packet(0x32, b"half-sent", pos=4)
    qos0 = packet(0x30, b"qos0", qos=0)
    client._out_packet = deque([partly_sent, packet(0x40, b"ack1"), packet(0x32, b"pub1"),
                                packet(0x40, b"ack2"), qos0, packet(0x40, b"ack3"),
                                packet(0xE0, b"bye")])
    _coalesce(client)
    sent = list(client._out_packet)
    assert sent[0] is partly_sent and sent[2] is qos0 and sent[3]["packet"] == b"ack3"
    assert sent[1]["packet"] == b"ack1pub1ack2" and sent[1]["to_process"] == 12
    assert sent[4]["packet"] == b"bye" and len(sent) == 5
    # the bytes on the wire, in order, are the same
    assert b"".join(p["packet"][p["pos"]:] for p in sent) == b"-sentack1pub1ack2qos0ack3bye"


def test_an_unknown_paho_send_queue_turns_joining_off_instead_of_breaking_writes(monkeypatch):
    from collections import deque

    from services import bus as bus_module

    monkeypatch.setattr(bus_module, "_coalescing", True)

    class Client:
        _out_packet = deque([{"cmd": 0x40, "data": b"a"}, {"cmd": 0x40, "data": b"b"}])

    client = Client()
    bus_module._coalesce(client)  # must not raise: the write that follows still happens
    assert list(client._out_packet) == [{"cmd": 0x40, "data": b"a"}, {"cmd": 0x40, "data": b"b"}]
    assert bus_module._coalescing is False


class UnansweredConnectTest(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_broker_that_never_answers_does_not_stall_the_reactor(self):
        # A listening socket whose accept queue is full drops further SYNs: a connect to it hangs,
        # as one to a broker behind a dead route would. Meanwhile the service must keep working
        # (the listener answers phones while the broker is away).
        import socket as _socket

        from services.broker import free_port

        server = _socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", free_port()))
        server.listen(0)
        fillers = []
        for _ in range(4):
            c = _socket.socket()
            c.setblocking(False)
            c.connect_ex(server.getsockname())
            fillers.append(c)
        self.addCleanup(lambda: [c.close() for c in fillers])
        host, port = server.getsockname()
        b = Bus(parse_mqtt_url(f"mqtt://{host}:{port}"), "test-hang", reactor, connect_timeout=1.0,
                backoff_initial=0.05)
        self.addCleanup(b.stop)
        ticks = []
        from twisted.internet import task
        import time as _time

        loop = task.LoopingCall(lambda: ticks.append(_time.monotonic()))
        loop.start(0.02)
        self.addCleanup(loop.stop)
        b.start()
        yield task.deferLater(reactor, 1.5, lambda: None)
        gaps = [b2 - a for a, b2 in zip(ticks, ticks[1:])]
        self.assertFalse(b.connected)
        self.assertLess(max(gaps), 0.5, f"the reactor stalled for {max(gaps):.2f}s")
