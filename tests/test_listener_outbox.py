"""The listener's outbox against a real bus and broker: windowed, coalesced, bounded."""

from __future__ import annotations

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
