"""The MQTT bus against a real mosquitto: round trips, retained state, reconnects, bad handlers."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from services.mqtt import Bus
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

        from services.mqtt.connect import READ_BATCH

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
    def test_no_local_keeps_our_own_messages_and_delivers_the_others(self) -> None:
        mine, everything, marks = [], [], []
        me = self.bus("me")
        me.subscribe("pnp/devices/+/fetched", lambda m: mine.append(m.raw), no_local=True)
        me.subscribe("mark", marks.append)
        other = self.bus("other")
        other.subscribe("pnp/devices/+/fetched", lambda m: everything.append(m.raw))
        yield me.when_subscribed()
        yield other.when_subscribed()
        me.publish("pnp/devices/000b82f55284/fetched", b"ours")
        # after our own message on the same connection: had it come back, it would be first
        me.publish("mark", b"1")
        yield eventually(lambda: marks)
        other.publish("pnp/devices/000b82f55284/fetched", b"theirs")
        yield eventually(lambda: mine)
        self.assertEqual(mine, [b"theirs"])
        yield eventually(lambda: len(everything) == 2)
        self.assertEqual(sorted(everything), [b"ours", b"theirs"])

    @defer.inlineCallbacks
    def test_a_no_local_filter_still_gets_every_retained_message_ours_included(self) -> None:
        # What the fileserver's own retained topics rely on (No Local spares it the echo of each
        # of its publishes): mosquitto checks No Local only when it forwards a live publish, so
        # the retained replay on subscribe, on a renewed subscription and after the broker
        # restarted still brings our own messages, from this connection or an earlier one.
        topic = "pnp/devices/{}/published"
        before = self.bus("fs")
        yield before.when_connected()
        before.publish(topic.format("000b82000001"), b"earlier run", retain=True)
        yield before.flush()
        before.stop()
        other = self.bus("other")
        yield other.when_connected()
        other.publish(topic.format("000b82000002"), b"theirs", retain=True)
        yield other.flush()
        got: list = []
        me = self.bus("fs")  # the same client id as the earlier run's
        me.subscribe(topic.format("+"), lambda m: got.append((m.topic[12:24], m.raw, m.retain)),
                     no_local=True)
        yield me.when_subscribed()
        yield eventually(lambda: len(got) == 2)
        self.assertEqual(sorted(got), [("000b82000001", b"earlier run", True),
                                       ("000b82000002", b"theirs", True)])
        marks: list = []
        me.subscribe("mark", marks.append)
        yield me.when_subscribed()
        del got[:]
        me.publish(topic.format("000b82000003"), b"ours, live", retain=True)
        me.publish("mark", b"1")  # after ours on one connection: had ours come back, it came first
        yield eventually(lambda: marks)
        other.publish(topic.format("000b82000002"), b"theirs, live", retain=True)
        yield eventually(lambda: got)
        self.assertEqual(got, [("000b82000002", b"theirs, live", False)])
        # a renewed subscription (the keeper reading its topics back) replays ours too
        del got[:]
        me.subscribe(topic.format("+"), lambda m: None, replay=True, no_local=True)
        yield eventually(lambda: len(got) == 3)
        self.assertEqual(sorted(got), [("000b82000001", b"earlier run", True),
                                       ("000b82000002", b"theirs, live", True),
                                       ("000b82000003", b"ours, live", True)])
        # and so does the broker, restarted from its save
        del got[:]
        connects = me.counters["mqtt_connects"]
        self.broker.stop()
        self.broker.start()
        yield eventually(lambda: me.counters["mqtt_connects"] > connects and len(got) == 3, timeout=10)
        self.assertEqual(sorted(got), [("000b82000001", b"earlier run", True),
                                       ("000b82000002", b"theirs, live", True),
                                       ("000b82000003", b"ours, live", True)])

    @defer.inlineCallbacks
    def test_a_handler_that_wants_every_message_renews_a_no_local_filter(self) -> None:
        quiet, loud = [], []
        me = self.bus("me")
        me.subscribe("pnp/devices/+/fetched", lambda m: quiet.append(m.raw), no_local=True)
        yield me.when_subscribed()
        me.subscribe("pnp/devices/+/fetched", lambda m: loud.append(m.raw))
        yield me.when_subscribed()
        me.publish("pnp/devices/000b82f55284/fetched", b"ours")
        yield eventually(lambda: loud and quiet)
        self.assertEqual((quiet, loud), ([b"ours"], [b"ours"]))

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


    @defer.inlineCallbacks
    def test_a_handler_may_stop_the_bus(self) -> None:
        # A command that waits for one answer stops when it arrives, inside the handler: paho is
        # then running our callback, and its disconnect used to wait for itself (a hung reactor).
        b = self.bus("stopper")
        stopped = []

        def answer(msg) -> None:
            b.stop()
            stopped.append(msg.topic)

        b.subscribe("answer/#", answer)
        yield b.when_subscribed()
        b.publish("answer/1", b"1")
        yield eventually(lambda: stopped)
        ticked = yield task.deferLater(reactor, 0.05, lambda: True)  # the reactor still turns
        self.assertTrue(ticked)
        self.assertFalse(b.connected)


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
