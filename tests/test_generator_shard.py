"""Two generators on one broker, shards 1/2 and 2/2: every device is rendered, answered and
cleared by exactly one of them, also when a profile changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task

from generator import main as generator_main
from services.messages import Config
from services.settings import COMMON, CONTRACT, SettingError, resolve
from services.shard import Shard
from tests.support import BrokerCase, eventually, make_settings

MACS = [f"000b82f552{i:02x}" for i in range(0x80, 0x88)]
BAD = "000b82f55288"  # an assignment the schema refuses
MISSPELLED = "00:0B:82:F5:52:89"  # not a topic MAC: answered on this very segment's error topic
PRESTAGED = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}],
             "vendor": "grandstream", "model": "GRP2614"}


def topic(mac: str, kind: str) -> str:
    return f"pnp/devices/{mac}/{kind}"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class TwoGeneratorsTest(BrokerCase):
    @defer.inlineCallbacks
    def start(self, shard: str) -> Any:
        settings = make_settings(self.broker, Path(self.mktemp()), extra=generator_main.SETTINGS,
                                 generator_settle="0.05", generator_shard=shard, instance=f"g{shard[0]}")
        rt = yield self.start_service("generator", settings, generator_main.start)
        yield eventually(lambda: rt.component.engine.ready)
        return rt

    def configs(self, mac: str) -> list[Config | None]:
        return [Config.from_json(p) if p else None for p in self.probe.on(topic(mac, "config"))]

    def errors(self, segment: str) -> list[bytes]:
        return self.probe.on(topic(segment, "error"))

    def assign(self, segment: str, payload: Any) -> None:
        self.probe.publish(topic(segment, "assignment"), b"" if payload is None else json.dumps(payload), retain=True)

    @defer.inlineCallbacks
    def test_each_device_is_rendered_answered_and_cleared_by_exactly_one_generator(self) -> Any:
        owners = {mac: Shard(1, 2).owns(mac) for mac in MACS}
        self.assertTrue(any(owners.values()) and not all(owners.values()), "both shards must own some")
        self.probe.publish("pnp/profiles/default", {"ntp_server": "ntp.one"}, retain=True)
        for mac in MACS:
            self.assign(mac, PRESTAGED)
        self.assign(BAD, {**PRESTAGED, "accounts": "not a list"})
        self.assign(MISSPELLED, PRESTAGED)
        first, second = yield defer.gatherResults([self.start("1/2"), self.start("2/2")])

        yield eventually(lambda: all(self.configs(m) for m in MACS) and self.errors(BAD) and self.errors(MISSPELLED))
        yield sleep(0.3)  # room for a second publish, were the other generator to send one
        for mac in MACS:
            self.assertEqual([c.revision for c in self.configs(mac)], [1], mac)
        self.assertEqual(len(self.errors(BAD)), 1)
        self.assertEqual(json.loads(self.errors(BAD)[0])["field"], "accounts")
        self.assertEqual(len(self.errors(MISSPELLED)), 1)
        self.assertEqual(self.configs(BAD), [])
        mine = sum(owners.values())
        for rt, count, inputs in ((first, mine, {m for m in [*MACS, BAD, MISSPELLED] if Shard(1, 2).owns(m)}),
                                  (second, len(MACS) - mine,
                                   {m for m in [*MACS, BAD, MISSPELLED] if Shard(2, 2).owns(m)})):
            self.assertEqual(rt.ctx.counters["configs_published"], count)
            self.assertEqual(rt.ctx.counters["assignments"], len(inputs))
            self.assertEqual(rt.ctx.counters["other_shard_skipped"], len(MACS) + 2 - len(inputs))

        # A changed profile: each generator re-renders its own devices, so each device once.
        self.probe.publish("pnp/profiles/default", {"ntp_server": "ntp.two"}, retain=True)
        yield eventually(lambda: all(len(self.configs(m)) == 2 for m in MACS))
        yield sleep(0.3)
        for mac in MACS:
            self.assertEqual([c.revision for c in self.configs(mac)], [1, 2], mac)
            self.assertIn("<P30>ntp.two</P30>", self.configs(mac)[-1].files[0].content)
        self.assertEqual(len(self.errors(BAD)), 1)

        # Fixing the bad one clears its error once; unassigning withdraws once; the misspelled
        # segment's error is cleared by the generator that raised it.
        self.assign(BAD, PRESTAGED)
        self.assign(MACS[0], None)
        self.assign(MISSPELLED, None)
        yield eventually(lambda: len(self.errors(BAD)) == 2 and self.configs(BAD) and len(self.configs(MACS[0])) == 3
                         and len(self.errors(MISSPELLED)) == 2)
        yield sleep(0.3)
        self.assertEqual(self.errors(BAD)[-1], b"")
        self.assertEqual([c.revision for c in self.configs(BAD)], [1])
        self.assertIsNone(self.configs(MACS[0])[-1])
        self.assertEqual(len(self.configs(MACS[0])), 3)
        self.assertEqual(self.errors(MISSPELLED)[-1], b"")
        self.assertEqual(len(self.errors(MISSPELLED)), 2)


def test_generator_shard_setting_defaults_to_everything_and_refuses_bad_values() -> None:
    every = COMMON + CONTRACT + generator_main.SETTINGS
    assert resolve(every, {}, environ={}).generator_shard == Shard(1, 1)
    assert resolve(every, {}, environ={"PNP_GENERATOR_SHARD": "2/3"}).generator_shard == Shard(2, 3)
    for bad in ["0/2", "3/2", "1/1025", "half"]:
        with pytest.raises(SettingError) as error:
            resolve(every, {"generator_shard": bad}, environ={})
        assert "PNP_GENERATOR_SHARD" in str(error.value) and "\n" not in str(error.value)
