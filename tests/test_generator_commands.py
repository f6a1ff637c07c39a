"""The generator's ``rearm`` and ``rotate`` commands on a real mosquitto: retained, acted on once
per id across restarts, and after a rebuilt store (the credential and the ids come back from our
own retained config, so the phones keep the password they hold and no command is acted on twice)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from generator import main as generator_main
from services.messages import Config
from services.runner import Runtime
from tests.support import BrokerCase, eventually, make_settings

MAC = "000b82f55284"
PRESTAGED = {"vendor": "yealink", "model": "T46S",
             "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}
PUBLIC = "http://127.0.0.1:8080/"


def topic(kind: str, mac: str = MAC) -> str:
    return f"pnp/devices/{mac}/{kind}"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class GeneratorCommandsTest(BrokerCase):
    def setUp(self) -> None:
        super().setUp()
        self.data_dir = Path(self.mktemp())

    @defer.inlineCallbacks
    def start(self) -> Any:
        settings = make_settings(self.broker, self.data_dir, extra=generator_main.SETTINGS,
                                 generator_settle="0.05", public_url=PUBLIC)
        rt: Runtime = yield self.start_service("generator", settings, generator_main.start)
        yield eventually(lambda: rt.component.engine.ready)
        return rt

    def configs(self) -> list[Config]:
        return [Config.from_json(p) for p in self.probe.on(topic("config")) if p]

    def command(self, kind: str, id_: str) -> None:
        self.probe.publish(topic(kind), json.dumps({"id": id_, "at": "2026-12-07T03:00:00.000Z", "v": 1}),
                           retain=True)

    @defer.inlineCallbacks
    def assigned_and_rotated(self) -> Any:
        rt = yield self.start()
        self.probe.publish(topic("assignment"), json.dumps(PRESTAGED), retain=True)
        yield eventually(lambda: self.configs())
        first = self.configs()[-1]
        self.command("rotate", "r1")
        yield eventually(lambda: self.configs()[-1].revision == 2)
        return rt, first, self.configs()[-1]

    @defer.inlineCallbacks
    def test_commands_act_once_per_id_and_a_restart_replays_nothing(self) -> Any:
        rt, first, rotated = yield self.assigned_and_rotated()
        assert first.auth and rotated.auth and rotated.enrol
        self.assertEqual(rotated.auth.previous, first.auth.password)
        mac_file = next(f for f in rotated.files if f.name == f"{MAC}.cfg").content
        self.assertIn(f"static.auto_provision.server.url = {PUBLIC}c/\n", mac_file)
        self.assertIn(f"static.auto_provision.server.password = {rotated.auth.password}\n", mac_file)
        self.command("rearm", "a1")
        yield eventually(lambda: self.configs()[-1].revision == 3)
        rearmed = self.configs()[-1]
        assert rearmed.auth and rearmed.enrol
        self.assertEqual((rearmed.auth.previous, rearmed.enrol.rearm), (None, "a1"))
        self.assertEqual(rt.ctx.counters["rotate_done"] + rt.ctx.counters["rearm_done"], 2)
        yield rt.stop()
        self.probe.messages.clear()
        rt = yield self.start()  # the retained commands come back: same ids, nothing to do
        yield eventually(lambda: self.configs())
        yield sleep(0.3)
        again = self.configs()[-1]
        self.assertEqual((again.revision, again.auth, again.enrol), (3, rearmed.auth, rearmed.enrol))
        self.assertEqual(rt.ctx.counters["rotate_done"] + rt.ctx.counters["rearm_done"], 0)

    @defer.inlineCallbacks
    def test_a_rebuilt_store_takes_the_credential_back_from_the_retained_config(self) -> Any:
        rt, _, rotated = yield self.assigned_and_rotated()
        yield rt.stop()
        db = self.data_dir / "generator.db"
        for extra in ("-wal", "-shm"):
            Path(str(db) + extra).unlink(missing_ok=True)
        db.write_bytes(b"not a database " * 100)
        self.probe.messages.clear()
        rt = yield self.start()
        yield eventually(lambda: self.configs())
        yield sleep(0.3)
        self.assertEqual(rt.ctx.health.counters["store_rebuilt"], 1)
        after = self.configs()[-1]
        # the same password (the phone holds it), its previous, the same revision; the retained
        # rotate r1 is not acted on again
        self.assertEqual((after.revision, after.auth, after.enrol), (2, rotated.auth, rotated.enrol))
        self.assertEqual(rt.ctx.counters["rotate_done"], 0)
        self.command("rotate", "r2")
        yield eventually(lambda: self.configs()[-1].revision == 3)
        assert rotated.auth and self.configs()[-1].auth
        self.assertEqual(self.configs()[-1].auth.previous, rotated.auth.password)

    @defer.inlineCallbacks
    def test_a_deleted_store_also_takes_the_credential_back(self) -> Any:
        rt, _, rotated = yield self.assigned_and_rotated()
        yield rt.stop()
        for path in self.data_dir.glob("generator.db*"):
            path.unlink()
        self.probe.messages.clear()
        rt = yield self.start()
        yield eventually(lambda: self.configs())
        yield sleep(0.3)
        after = self.configs()[-1]
        self.assertEqual((after.revision, after.auth, after.enrol), (2, rotated.auth, rotated.enrol))
        self.assertEqual(rt.ctx.counters["rotate_done"], 0)

    @defer.inlineCallbacks
    def test_a_bad_command_is_counted_and_changes_nothing(self) -> Any:
        rt, _, rotated = yield self.assigned_and_rotated()
        for payload in (b"{", b"[]", json.dumps({"id": ""}), json.dumps({"id": 5, "at": ""}), b"\xff"):
            self.probe.publish(topic("rearm"), payload, retain=True)
        yield eventually(lambda: rt.ctx.counters["commands_refused"] == 5)
        self.assertEqual(self.configs()[-1].auth, rotated.auth)
        self.assertTrue(rt.bus.connected)


class CredentialBeforeConfigTest(BrokerCase):
    """A config that carries a new credential leaves only once the credential is committed: a
    phone may fetch it at once, and a credential lost to a crash would be replaced by another."""

    @defer.inlineCallbacks
    def check_credential_on_disk(self, assignment: dict, discovery: dict | None) -> Any:
        from generator import service as generator_service
        self.patch(generator_service, "COMMIT_AFTER", 3600.0)  # the batched commit never comes
        data_dir = Path(self.mktemp())
        settings = make_settings(self.broker, data_dir, extra=generator_main.SETTINGS,
                                 generator_settle="0.05", public_url=PUBLIC)
        rt: Runtime = yield self.start_service("generator", settings, generator_main.start)
        yield eventually(lambda: rt.component.engine.ready)
        self.probe.publish(topic("assignment"), json.dumps(assignment), retain=True)
        if discovery is not None:
            yield eventually(lambda: MAC in rt.component.engine.credentials)
            yield sleep(0.1)
            self.assertEqual([p for p in self.probe.on(topic("config")) if p], [])  # it waits
            self.probe.publish(topic("discovered"), json.dumps(discovery), retain=True)
        yield eventually(lambda: [p for p in self.probe.on(topic("config")) if p])
        config = Config.from_json([p for p in self.probe.on(topic("config")) if p][-1])
        assert config.auth is not None
        import sqlite3
        db = sqlite3.connect(str(next(data_dir.rglob("generator.db"))))
        try:
            rows = db.execute("SELECT password FROM credentials WHERE mac = ?", (MAC,)).fetchall()
        finally:
            db.close()
        self.assertEqual(rows, [(config.auth.password,)])

    def test_the_credential_is_on_disk_when_its_config_is_published(self) -> Any:
        return self.check_credential_on_disk(PRESTAGED, None)

    def test_on_a_first_boot_too(self) -> Any:
        """The credential of a device that waits for its phone is made before the phone boots;
        its config still leaves only once the credential is committed."""
        bare = {k: v for k, v in PRESTAGED.items() if k not in ("vendor", "model")}
        return self.check_credential_on_disk(bare, {"mac": MAC, "vendor": "yealink", "model": "SIP-T46S",
                                                    "firmware": "66.86.0.15"})
