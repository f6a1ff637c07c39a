"""`pnp simulate --assign`: pre-staged assignments on a real broker, valid by the project's schema."""

from __future__ import annotations

import json

from twisted.internet import defer

from generator.schema import problems
from services.settings import parse_mqtt_url
from tests.support import BrokerCase
from tools.simulate.fleet import plan
from tools.simulate.staging import StagingError, assignment, stage


def test_every_vendors_assignment_passes_the_schema_and_renders_the_same_each_time():
    idents = plan(4, ["GRP2614", "T46S", "D785", "X4U"])
    for i, ident in enumerate(idents):
        doc = assignment(ident, i)
        assert problems(doc) == [], (ident.vendor.name, problems(doc))
        assert (doc["vendor"], doc["model"]) == (ident.vendor.name, ident.model)
        assert doc == assignment(ident, i)  # no random password: a re-run must not reflash
    assert [assignment(x, i)["accounts"][0]["user_id"] for i, x in enumerate(idents)] == ["1001", "1002", "1003", "1004"]


class StagingTest(BrokerCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_publishes_retained_assignments_then_waits_for_the_files(self):
        idents = plan(3, ["GRP2614", "T46S"], mac_start=0x10)
        seen = []

        def progress(done, total):
            seen.append((done, total))
            # play the fileserver: publish each phone's files once its assignment is there
            for ident in idents:
                topic = f"pnp/devices/{ident.mac}/files"
                if self.probe.last(f"pnp/devices/{ident.mac}/assignment") and not self.probe.on(topic):
                    self.probe.publish(topic, {"files": [], "revision": 1},
                                       retain=True)

        n = yield stage(idents, parse_mqtt_url(self.broker.url), "pnp", wait_published=10,
                        on_progress=progress, sip_server="pbx.test")
        self.assertEqual(n, 3)
        self.assertEqual(seen[-1], (3, 3))
        for i, ident in enumerate(idents):
            retained = [r for t, p, r in self.probe.messages if t == f"pnp/devices/{ident.mac}/assignment"]
            self.assertEqual(len(retained), 1)
            doc = self.probe.last(f"pnp/devices/{ident.mac}/assignment")
            self.assertEqual(doc["accounts"][0]["sip_server"], "pbx.test")
            self.assertEqual(doc["vendor"], ident.vendor.name)

    @defer.inlineCallbacks
    def test_a_missing_broker_is_a_clear_error(self):
        self.broker.stop()
        d = stage(plan(1), parse_mqtt_url(self.broker.url), "pnp", wait_published=0, connect_timeout=1)
        try:
            yield d
        except StagingError as exc:
            self.assertIn("not reachable", str(exc))
        else:
            self.fail("staging without a broker succeeded")
