"""The console reads the broker in batches (Bus.pace_reads, console.service.READ_PACE), against a
real mosquitto: what comes while it pauses waits and is read in one go; a backlog is not read
slower; after a reconnect it still paces; nothing is lost."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from console.service import READ_PACE
from services.mqtt import Bus
from services.settings import parse_mqtt_url
from tests.support import BrokerCase, Probe, eventually


class ReadPacingTest(BrokerCase):
    probe_topics = None

    def setUp(self) -> None:
        super().setUp()
        # the real reactor for the socket, a clock of the test's for the pause: the test says
        # when a pause is over (no timed asserts)
        self.clock = task.Clock()
        self.sender = Probe(self.broker.url, "nothing/#")
        self.addCleanup(self.sender.close)
        self.bus = Bus(parse_mqtt_url(self.broker.url), "test-console", reactor, backoff_initial=0.05,
                       backoff_max=0.5)
        self.addCleanup(self.bus.stop)
        self.got: list[str] = []
        self.reads = 0
        self.bus.subscribe("pnp/devices/+/notify", lambda msg: self.got.append(msg.topic), qos=0)

    @defer.inlineCallbacks
    def connect(self) -> Any:
        self.bus.start()
        yield self.bus.when_subscribed()
        # out of the read that took the SUBACK (when_subscribed fires within it) first: the
        # test's clock, not the reactor, ends a pause, and the connect's reads should not wait
        yield task.deferLater(reactor, 0, lambda: None)
        self.bus.pace_reads(READ_PACE, clock=self.clock)

    def count_reads(self) -> None:
        reader = self.bus._reader
        read = reader.doRead

        def counted() -> None:
            self.reads += 1
            read()

        reader.doRead = counted

    def publish(self, n: int, first: int = 0) -> None:
        for i in range(first, first + n):
            self.sender.publish(f"pnp/devices/{i:012x}/notify", {"status": "sent"})

    @defer.inlineCallbacks
    def test_what_comes_during_a_pause_waits_and_is_read_in_one_read(self) -> None:
        yield self.connect()
        self.count_reads()
        self.publish(1)
        yield eventually(lambda: len(self.got) == 1)  # after a quiet spell: read when it comes
        self.assertEqual(self.bus.read_pauses(), 1)
        self.publish(20, first=1)
        # each acknowledged by the broker, so on its way to us; the console does not look yet
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.got), 1)
        reads = self.reads
        self.clock.advance(READ_PACE)
        yield eventually(lambda: len(self.got) == 21)
        self.assertEqual(self.reads - reads, 1)  # twenty messages, one wakeup
        self.assertEqual(self.bus.read_pauses(), 2)

    @defer.inlineCallbacks
    def test_a_backlog_is_read_batch_after_batch_without_pausing(self) -> None:
        from services.mqtt.connect import READ_BATCH

        yield self.connect()
        self.publish(1)
        yield eventually(lambda: len(self.got) == 1)
        self.publish(3 * READ_BATCH, first=1)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.clock.advance(READ_PACE)
        # more than one read's batch: the bus comes back for the rest next turn, no pause between
        yield eventually(lambda: len(self.got) == 1 + 3 * READ_BATCH)
        self.assertEqual(self.bus.read_pauses(), 2)

    @defer.inlineCallbacks
    def test_after_a_reconnect_the_new_connection_is_paced_and_nothing_is_lost(self) -> None:
        yield self.connect()
        self.publish(1)
        yield eventually(lambda: len(self.got) == 1)
        self.broker.stop()  # while the first connection's read is paused

        def gone() -> bool:
            self.clock.advance(READ_PACE)  # a paused reader sees the hang-up when it looks again
            return not self.bus.connected

        yield eventually(gone)
        self.broker.start()
        # the new connection is paced from its first read (CONNACK, SUBACK): end each pause
        subscribed: list[bool] = []
        self.bus.when_subscribed().addCallback(lambda _: subscribed.append(True))

        def paused_reads_return() -> bool:
            self.clock.advance(READ_PACE)
            return bool(subscribed)

        yield eventually(paused_reads_return, timeout=10)
        yield task.deferLater(reactor, 0, lambda: None)
        self.clock.advance(READ_PACE)  # a pause after the read that took the SUBACK, if there was one
        sender = Probe(self.broker.url, "nothing/#")
        self.addCleanup(sender.close)
        pauses = self.bus.read_pauses()
        sender.publish("pnp/devices/00000000000a/notify", {"status": "sent"})
        yield eventually(lambda: len(self.got) == 2)
        self.assertEqual(self.bus.read_pauses(), pauses + 1)
        sender.publish("pnp/devices/00000000000b/notify", {"status": "sent"})
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.got), 2)
        self.clock.advance(READ_PACE)
        yield eventually(lambda: len(self.got) == 3)
