"""The generator as a service on a real mosquitto: pre-staging, waiting for the discovery,
profiles and their re-render, unassigning, every error path, and a restart that rebuilds from the
broker without bumping revisions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from generator import main as generator_main
from services.messages import Config
from services.runner import Runtime
from tests.support import BrokerCase, Probe, eventually, make_settings

MAC = "000b82f55284"
MAC2 = "000b82f55285"
MAC3 = "000b82f55286"
SMALLEST = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret",
                          "display_name": "Alice"}]}
PRESTAGED = {**SMALLEST, "vendor": "grandstream", "model": "GRP2614"}


def topic(mac: str, kind: str) -> str:
    return f"pnp/devices/{mac}/{kind}"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class GeneratorServiceTest(BrokerCase):
    def setUp(self) -> None:
        super().setUp()
        self.data_dir = Path(self.mktemp())
        self.runtimes: list[Runtime] = []

    @defer.inlineCallbacks
    def start(self, **values: str) -> Any:
        settings = make_settings(self.broker, self.data_dir, extra=generator_main.SETTINGS,
                                 generator_settle="0.05", **values)
        rt = yield self.start_service("generator", settings, generator_main.start)
        self.runtimes.append(rt)
        yield eventually(lambda: rt.component.engine.ready)
        return rt

    def configs(self, mac: str) -> list[Config | None]:
        return [Config.from_json(p) if p else None for p in self.probe.on(topic(mac, "config"))]

    def last_error(self, mac: str) -> Any:
        return self.probe.last(topic(mac, "error"))

    def assign(self, mac: str, payload: Any) -> None:
        raw = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.probe.publish(topic(mac, "assignment"), raw, retain=True)

    @defer.inlineCallbacks
    def test_prestaged_assignment_is_rendered_before_the_phone_is_seen(self) -> Any:
        yield self.start()
        self.assign(MAC, PRESTAGED)
        yield eventually(lambda: self.configs(MAC))
        config = self.configs(MAC)[-1]
        self.assertEqual((config.mac, config.vendor, config.model, config.revision, config.notify_path),
                         (MAC, "grandstream", "GRP2614", 1, ""))
        self.assertEqual(config.template, "grandstream/grp26xx")
        (f,) = config.files
        self.assertEqual((f.name, f.encoding, f.content_type), (f"cfg{MAC}.xml", "utf-8", "application/xml"))
        body = f.content.encode()
        self.assertEqual((f.sha256, f.size), (hashlib.sha256(body).hexdigest(), len(body)))
        self.assertIn("<P47>pbx.example.com</P47>", f.content)
        # retained, QoS 1: a subscriber arriving later gets it
        late = Probe(self.broker.url, topic(MAC, "config"))
        self.addCleanup(late.close)
        yield eventually(lambda: late.on(topic(MAC, "config")))

    @defer.inlineCallbacks
    def test_without_vendor_and_model_it_waits_for_the_discovery(self) -> Any:
        rt = yield self.start()
        self.assign(MAC, SMALLEST)
        yield eventually(lambda: rt.component.engine.devices.get(MAC) and rt.component.engine.devices[MAC].assignment)
        yield sleep(0.2)
        self.assertEqual(self.configs(MAC), [])
        self.probe.publish(topic(MAC, "discovered"), {"mac": MAC, "vendor": "grandstream", "model": "GRP2612",
                                                      "firmware": "1.0.0.31"}, retain=True)
        yield eventually(lambda: self.configs(MAC))
        self.assertEqual(self.configs(MAC)[-1].model, "GRP2612")
        # the same discovery again (the phone rebooted): nothing new to publish
        self.probe.publish(topic(MAC, "discovered"), {"mac": MAC, "vendor": "grandstream", "model": "GRP2612",
                                                      "firmware": "1.0.0.31", "boot": 2}, retain=True)
        yield sleep(0.2)
        self.assertEqual(len(self.configs(MAC)), 1)

    @defer.inlineCallbacks
    def test_profile_defaults_and_a_changed_profile_rerenders_its_devices(self) -> Any:
        self.probe.publish("pnp/profiles/default", {"ntp_server": "ntp.default"}, retain=True)
        self.probe.publish("pnp/profiles/office", {"codecs": ["g722"], "time_zone": "Europe/Berlin"}, retain=True)
        for mac in (MAC, MAC2):
            self.assign(mac, {**PRESTAGED, "profile": "office"})
        self.assign(MAC3, PRESTAGED)
        yield self.start()
        yield eventually(lambda: all(self.configs(m) for m in (MAC, MAC2, MAC3)))
        first = self.configs(MAC)[-1].files[0].content
        self.assertIn("<P30>ntp.default</P30>", first)
        self.assertIn("<P57>9</P57>", first)
        self.assertIn("<P30>ntp.default</P30>", self.configs(MAC3)[-1].files[0].content)
        self.assertNotIn("<P57>", self.configs(MAC3)[-1].files[0].content)
        # the assignment wins over the profile
        self.assign(MAC2, {**PRESTAGED, "profile": "office", "codecs": ["pcma"]})
        yield eventually(lambda: len(self.configs(MAC2)) == 2)
        self.assertIn("<P57>8</P57>", self.configs(MAC2)[-1].files[0].content)

        self.probe.publish("pnp/profiles/office", {"codecs": ["opus"], "time_zone": "Europe/Berlin"}, retain=True)
        yield eventually(lambda: len(self.configs(MAC)) == 2)
        self.assertIn("<P57>123</P57>", self.configs(MAC)[-1].files[0].content)
        self.assertEqual(self.configs(MAC)[-1].revision, 2)
        yield sleep(0.2)
        # MAC2's own codecs win, so its bytes did not change: nothing new; MAC3 does not use "office"
        self.assertEqual(len(self.configs(MAC2)), 2)
        self.assertEqual(len(self.configs(MAC3)), 1)
        # null in an assignment removes the profile's value
        self.assign(MAC3, {**PRESTAGED, "ntp_server": None})
        yield eventually(lambda: len(self.configs(MAC3)) == 2)
        self.assertNotIn("<P30>", self.configs(MAC3)[-1].files[0].content)
        self.assertIsNone(self.last_error(MAC3))

    def resync(self, mac: str) -> list[Any]:
        return [json.loads(p) if p else None for p in self.probe.on(topic(mac, "resync"))]

    @defer.inlineCallbacks
    def test_account_1_credentials_go_with_each_revision_on_the_resync_topic(self) -> Any:
        yield self.start()
        self.assign(MAC, {**PRESTAGED, "accounts": [
            {**SMALLEST["accounts"][0], "auth_id": "auth1001"},
            {"sip_server": "pbx.example.com", "user_id": "2002", "password": "other"}]})
        yield eventually(lambda: self.resync(MAC))
        first = self.resync(MAC)[-1]
        self.assertEqual((first["username"], first["password"], first["revision"], first["mac"]),
                         ("auth1001", "s3cret", 1, MAC))
        # a new password is a new revision, and its credentials come with it
        self.assign(MAC, {**PRESTAGED, "accounts": [{**SMALLEST["accounts"][0], "password": "n3w"}]})
        yield eventually(lambda: self.resync(MAC)[-1]["revision"] == 2)
        self.assertEqual((self.resync(MAC)[-1]["username"], self.resync(MAC)[-1]["password"]), ("1001", "n3w"))
        self.assertEqual(self.configs(MAC)[-1].revision, 2)
        self.assign(MAC, b"")
        yield eventually(lambda: self.resync(MAC)[-1] is None)

    @defer.inlineCallbacks
    def test_unassign_withdraws_the_config(self) -> Any:
        yield self.start()
        self.assign(MAC, PRESTAGED)
        yield eventually(lambda: self.configs(MAC))
        self.probe.publish(topic(MAC, "assignment"), b"", retain=True)
        yield eventually(lambda: self.configs(MAC)[-1] is None)
        late = Probe(self.broker.url, topic(MAC, "config"))
        self.addCleanup(late.close)
        yield sleep(0.2)
        self.assertEqual(late.on(topic(MAC, "config")), [])

    @defer.inlineCallbacks
    def test_bad_inputs_are_answered_on_error_and_the_last_good_config_stays(self) -> Any:
        yield self.start()
        self.assign(MAC, PRESTAGED)
        yield eventually(lambda: self.configs(MAC))
        good = self.probe.on(topic(MAC, "config"))[-1]

        self.assign(MAC, b"{not json")
        yield eventually(lambda: self.last_error(MAC))
        error = self.last_error(MAC)
        self.assertEqual((error["service"], error["code"]), ("generator", "json"))
        self.assertIn("not usable JSON", error["message"])

        bad = {**PRESTAGED, "accounts": [{**SMALLEST["accounts"][0], "transport": "sctp"}]}
        self.assign(MAC, bad)
        yield eventually(lambda: (self.last_error(MAC) or {}).get("code") == "schema")
        error = self.last_error(MAC)
        self.assertEqual(error["field"], "accounts[0].transport")
        self.assertIn("'sctp' is not one of", error["message"])

        too_many = {**PRESTAGED, "model": "GRP2612", "keys": [{"type": "blf", "value": str(i)} for i in range(17)]}
        self.assign(MAC, too_many)
        yield eventually(lambda: (self.last_error(MAC) or {}).get("code") == "model_limit")
        self.assertEqual(self.last_error(MAC)["field"], "keys[16]")

        self.assign(MAC, {**PRESTAGED, "profile": "nosuch"})
        yield eventually(lambda: (self.last_error(MAC) or {}).get("code") == "profile")
        self.assertIn("'nosuch'", self.last_error(MAC)["message"])

        # none of that replaced the good config, for anyone arriving later
        late = Probe(self.broker.url, topic(MAC, "config"))
        self.addCleanup(late.close)
        yield eventually(lambda: late.on(topic(MAC, "config")))
        self.assertEqual(late.on(topic(MAC, "config"))[-1], good)

        # fixed: the error is cleared and the new config goes out
        self.assign(MAC, {**PRESTAGED, "ntp_server": "ntp.example.com"})
        yield eventually(lambda: self.probe.on(topic(MAC, "error"))[-1] == b"")
        self.assertEqual(self.configs(MAC)[-1].revision, 2)

    @defer.inlineCallbacks
    def test_a_mac_spelled_another_way_gets_an_error_naming_it(self) -> Any:
        yield self.start()
        self.assign("00:0B:82:F5:52:84", PRESTAGED)
        yield eventually(lambda: self.last_error("00:0B:82:F5:52:84"))
        error = self.last_error("00:0B:82:F5:52:84")
        self.assertEqual((error["code"], error["field"]), ("mac", "mac"))
        self.assertIn("'00:0B:82:F5:52:84'", error["message"])
        self.assertIn(MAC, error["message"])
        self.assertEqual(self.configs(MAC), [])

    @defer.inlineCallbacks
    def test_discovered_model_wins_over_prestaging_unless_the_listener_could_not_name_it(self) -> Any:
        yield self.start()
        self.probe.publish(topic(MAC, "discovered"), {"mac": MAC, "vendor": "unknown", "model": "",
                                                      "firmware": ""}, retain=True)
        self.assign(MAC, PRESTAGED)
        yield eventually(lambda: self.configs(MAC))
        self.assertEqual(self.configs(MAC)[-1].model, "GRP2614")
        self.probe.publish(topic(MAC, "discovered"), {"mac": MAC, "vendor": "grandstream", "model": "GRP2612",
                                                      "firmware": "1.0.0.31"}, retain=True)
        yield eventually(lambda: len(self.configs(MAC)) == 2)
        self.assertEqual((self.configs(MAC)[-1].model, self.configs(MAC)[-1].revision), ("GRP2612", 2))

    @defer.inlineCallbacks
    def test_a_phone_without_a_template_gets_an_error_naming_vendor_and_model(self) -> Any:
        yield self.start()
        self.probe.publish(topic(MAC, "discovered"), {"mac": MAC, "vendor": "polycom", "model": "VVX411",
                                                      "firmware": "6.3.0"}, retain=True)
        self.assign(MAC, SMALLEST)
        yield eventually(lambda: self.last_error(MAC))
        error = self.last_error(MAC)
        self.assertEqual(error["code"], "no_template")
        self.assertIn("polycom", error["message"])
        self.assertIn("VVX411", error["message"])

    @defer.inlineCallbacks
    def test_template_dir_override_and_a_broken_template(self) -> Any:
        templates = Path(self.mktemp())
        (templates / "grandstream" / "grp2612").mkdir(parents=True)
        (templates / "grandstream" / "grp2612" / "cfg.xml.j2").write_text("<x>{{ mac }}</x>\n")
        (templates / "grandstream" / "grp2613").mkdir(parents=True)
        (templates / "grandstream" / "grp2613" / "cfg.xml.j2").write_text("<x>{{ no_such_value }}</x>\n")
        yield self.start(template_dir=str(templates))
        self.assign(MAC, {**PRESTAGED, "model": "GRP2612"})
        self.assign(MAC2, {**PRESTAGED, "model": "GRP2613"})
        yield eventually(lambda: self.configs(MAC) and self.last_error(MAC2))
        self.assertEqual(self.configs(MAC)[-1].files[0].content, f"<x>{MAC}</x>\n")
        self.assertEqual(self.configs(MAC)[-1].template, "grandstream/grp2612")
        error = self.last_error(MAC2)
        self.assertEqual(error["code"], "template")
        self.assertIn("no_such_value", error["message"])

    @defer.inlineCallbacks
    def test_a_restart_rebuilds_from_the_broker_with_the_same_bytes_and_revision(self) -> Any:
        rt = yield self.start()
        self.assign(MAC, PRESTAGED)
        yield eventually(lambda: self.configs(MAC))
        before = self.configs(MAC)[-1]
        yield rt.stop()
        self.probe.messages.clear()
        yield self.start()
        yield eventually(lambda: self.configs(MAC))
        after = self.configs(MAC)[-1]
        self.assertEqual(after.files[0].sha256, before.files[0].sha256)
        self.assertEqual(after.revision, before.revision)
        self.assign(MAC, {**PRESTAGED, "admin_password": "new"})
        yield eventually(lambda: self.configs(MAC)[-1].revision == before.revision + 1)

    @defer.inlineCallbacks
    def test_hostile_inputs_do_not_stop_it(self) -> Any:
        rt = yield self.start()
        for payload in (b"\xff\xfe", b"[]", b"null", b"1e999999", json.dumps({"accounts": [None]}),
                        json.dumps({"accounts": [{"sip_server": "x" * 10000, "user_id": "1"}]}),
                        b"[" * 100000):
            self.assign(MAC, payload)
        self.probe.publish("pnp/profiles/default", b"{bad", retain=True)
        self.probe.publish(topic(MAC2, "discovered"), b"[1,2]", retain=True)
        yield sleep(0.3)
        self.probe.publish("pnp/profiles/default", b"", retain=True)
        self.assign(MAC3, PRESTAGED)
        yield eventually(lambda: self.configs(MAC3))
        self.assertTrue(rt.bus.connected)


    @defer.inlineCallbacks
    def test_once_ready_its_own_configs_do_not_come_back_to_it(self) -> Any:
        """A new store takes revisions back from the retained configs until ready (Reseed); after
        that every config it publishes would come back through the broker, for nothing."""
        rt = yield self.start()
        received = rt.bus.counters["mqtt_received"]
        macs = [f"000b82f5{i:04x}" for i in range(5)]
        for mac in macs:
            self.assign(mac, PRESTAGED)
        yield eventually(lambda: all(self.configs(m) for m in macs))
        yield sleep(0.2)
        # the five assignments, and at most our own retained-marker
        self.assertLessEqual(rt.bus.counters["mqtt_received"] - received, len(macs) + 1)


class _Bus:
    """What the service needs of the bus, keeping what it publishes."""

    connected = False

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> bool:
        self.published.append((topic, payload))
        return True

    def on_connect(self, callback: Any) -> None:
        pass

    def on_disconnect(self, callback: Any) -> None:
        pass

    def when_subscribed(self) -> defer.Deferred:
        return defer.Deferred()


def offline_service(tmp_path: Path) -> tuple[Any, task.Clock, _Bus]:
    """The service as main starts it, on a recording bus and a fake clock, ready."""
    from services.messages import now_iso
    from services.runner import Context
    from services.settings import COMMON, CONTRACT, resolve
    from services.topics import Topics

    settings = resolve(COMMON + CONTRACT + generator_main.SETTINGS,
                       {"mqtt_url": "mqtt://127.0.0.1:1", "data_dir": str(tmp_path), "instance": "test",
                        "public_url": "http://127.0.0.1:8080/"}, environ={})
    clock, bus = task.Clock(), _Bus()
    service = generator_main.start(Context("generator", settings, bus, Topics("pnp"), clock, now_iso()))  # type: ignore[arg-type]
    service.engine.ready = True
    return service, clock, bus


def next_turn(clock: task.Clock) -> None:
    """What the reactor runs in its next turn: the calls due now, not those they add."""
    for call in [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def published_configs(bus: _Bus) -> list[tuple[str, bool]]:
    return [(t.split("/")[2], bool(p)) for t, p in bus.published if t.endswith("/config")]


def test_configs_with_new_credentials_wait_for_one_commit_and_keep_their_order(tmp_path: Path) -> None:
    """Pre-staged assignments arriving in one turn get their credentials in one commit, at the
    end of the turn; their configs leave after it, and nothing of that turn overtakes them (an
    unassignment stays the last word)."""
    from services.mqtt import Incoming

    service, clock, bus = offline_service(tmp_path)
    macs = [f"000b82f5{i:04x}" for i in range(3)]
    for mac in macs:
        service.on_assignment(Incoming(topic(mac, "assignment"), json.dumps(PRESTAGED).encode(), True))
    service.on_assignment(Incoming(topic(macs[1], "assignment"), b"", True))
    assert published_configs(bus) == []  # the credentials are not committed yet
    next_turn(clock)
    assert published_configs(bus) == [(macs[0], True), (macs[1], True), (macs[2], True), (macs[1], False)]
    import sqlite3
    db = sqlite3.connect(str(tmp_path / "generator.db"))
    try:
        stored = {mac for (mac,) in db.execute("SELECT mac FROM credentials")}
    finally:
        db.close()
    assert stored == set(macs)
    service.stop()


def test_the_first_discovery_of_a_turn_renders_at_once_the_others_one_per_later_turn(tmp_path: Path) -> None:
    """What one read batch publishes leaves at its end: a phone's config must not wait there for
    the renders of the discoveries behind it. The others follow, one per turn, in arrival order;
    none is lost, and one of them discovered again is rendered once."""
    from services.messages import Discovered, now_iso
    from services.mqtt import Incoming

    service, clock, bus = offline_service(tmp_path)
    macs = [f"000b82f5{i:04x}" for i in range(4)]
    for mac in macs:
        service.on_assignment(Incoming(topic(mac, "assignment"), json.dumps(SMALLEST).encode(), True))
    clock.advance(1)  # their credentials committed, while the devices wait for their phones

    def discovery(mac: str) -> Incoming:
        payload = Discovered(mac=mac, vendor="grandstream", model="GRP2614", firmware="1.0.5.67", ip="10.0.0.7",
                             port=5060, contact="", user_agent="", call_id=mac, from_tag="f", to_tag="t",
                             seen_at=now_iso()).to_json()
        return Incoming(topic(mac, "discovered"), payload, True)

    def configs() -> list[str]:
        return [t.split("/")[2] for t, p in bus.published if t.endswith("/config") and p]

    for mac in macs + [macs[2]]:  # one turn: a read batch of five discoveries
        service.on_discovered(discovery(mac))
    assert configs() == macs[:1]
    for turn in range(1, 4):
        next_turn(clock)
        assert configs() == macs[:turn + 1]
    clock.advance(1)
    assert configs() == macs
    service.stop()
