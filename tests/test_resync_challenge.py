"""Resync of phones that challenge the NOTIFY, end to end: a real mosquitto, the listener,
generator, fileserver and notifier in this process, and simulated GRP phones on their own
127.x addresses (multicast pinned to loopback, NETWORK-SAFETY.md rule 2).

The phones boot, are provisioned by Plug and Play, then their assignment changes: the notifier's
check-sync NOTIFY is challenged (401, as a factory GRP does with P4428=0), answered with account
1's credentials from the notifier-only ``resync`` topic, and the phone fetches its new file. The
phones take their account from the file they fetched, as a GRP does; one whose password was then
changed on the phone refuses the answer: rejected with its code, and an error.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from twisted.internet import defer

import fileserver.main
import generator.main
import listener.main
import notifier.main
from services.broker import free_port
from tests.support import BrokerCase, eventually, make_settings
from tools.simulate.fleet import Fleet, plan
from tools.simulate.phone import State, Timing

FAST = Timing(t1=0.1, notify_timeout=5.0, reboot_delay=0.05, jitter=0.0)


def assignment(user: str, password: str, name: str) -> dict:
    return {"accounts": [{"sip_server": "pbx.example.com", "user_id": user, "password": password,
                          "display_name": name}]}


class ResyncChallengeTest(BrokerCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.data_dir = Path(self.mktemp())
        self.sip_port = free_port()
        self.http_port = free_port()

    @defer.inlineCallbacks
    def run_service(self, name: str, module: Any, **values: str) -> Any:
        settings = make_settings(
            self.broker, self.data_dir / name, extra=module.SETTINGS, sip_interface="127.0.0.1",
            sip_port=str(self.sip_port), http_port=str(self.http_port),
            public_url=f"http://127.0.0.1:{self.http_port}/", **values)
        rt = yield self.start_service(name, settings, module.start)
        yield rt.bus.when_subscribed()
        return rt

    def assign(self, mac: str, data: dict) -> None:
        self.probe.publish(f"pnp/devices/{mac}/assignment", json.dumps(data), retain=True)

    def final(self, mac: str, kind: str) -> Any:
        done = [s for s in self.probe.json_on(f"pnp/devices/{mac}/notify")
                if s and s["kind"] == kind and s["status"] != "sent"]
        return done[-1] if done else None

    @defer.inlineCallbacks
    def test_challenged_resync_is_answered_and_a_wrong_password_is_reported(self):
        yield self.run_service("generator", generator.main, generator_settle="0.05")
        yield self.run_service("fileserver", fileserver.main)
        yield self.run_service("notifier", notifier.main, sip_t1="0.05", sip_t2="0.4")
        yield self.run_service("listener", listener.main)
        right, wrong = idents = plan(2, ["GRP2614"], f"127.{random.randint(60, 250)}.{random.randint(0, 200)}.2")
        self.assign(right.mac, assignment("1001", "s3cret", "Alice"))
        self.assign(wrong.mac, assignment("1002", "new-password", "Bob"))
        fleet = Fleet(idents, self.sip_port, FAST, timeout=50, linger=50)
        good, bad = fleet.phones
        report = fleet.run()
        self.addCleanup(lambda: fleet.stop() if not report.called else None)
        # Plug and Play first: a factory phone does not challenge the ua-profile NOTIFY.
        yield eventually(lambda: fleet.progress().provisioned == 2, timeout=30)
        yield eventually(lambda: all(self.probe.json_on(f"pnp/devices/{m}/fetched")[-1]["provisioned"]
                                     for m in (right.mac, wrong.mac)
                                     if self.probe.json_on(f"pnp/devices/{m}/fetched")), timeout=10)
        self.assertEqual((good.challenges, bad.challenges), (0, 0))
        # each learned its account from its file (P35/P36, P34), as a GRP does
        self.assertEqual((good.notify_auth, bad.notify_auth), (("1001", "s3cret"), ("1002", "new-password")))
        bad.notify_auth = ("1002", "old-password")  # someone changed it on the phone's web page

        # The PBX renames both users: revision 2, a check-sync each.
        self.assign(right.mac, assignment("1001", "s3cret", "Alice Liddell"))
        self.assign(wrong.mac, assignment("1002", "new-password", "Bob Marley"))
        accepted = yield eventually(lambda: self.final(right.mac, "check-sync"), timeout=20)
        rejected = yield eventually(lambda: self.final(wrong.mac, "check-sync"), timeout=20)
        yield eventually(lambda: good.times.resynced is not None and good.state == State.PROVISIONED,
                         timeout=20)
        fleet.stop()
        yield report

        # 401 -> the same NOTIFY with credentials -> 200 -> the phone fetched revision 2
        self.assertEqual((accepted["status"], accepted["code"], accepted["revision"], accepted["challenged"]),
                         ("accepted", 200, 2, True))
        self.assertGreaterEqual(accepted["attempts"], 2)
        self.assertEqual((good.challenges, good.auth_failures, good.resyncs), (1, 0, 1))
        fetched = self.probe.json_on(f"pnp/devices/{right.mac}/fetched")[-1]
        self.assertEqual((fetched["revision"], fetched["provisioned"]), (2, True))

        # the phone with another password: challenged twice, never resynced, reported
        self.assertEqual((rejected["status"], rejected["code"], rejected["challenged"]), ("rejected", 401, True))
        self.assertEqual((bad.challenges, bad.auth_failures, bad.resyncs), (2, 1, 0))
        error = self.probe.last(f"pnp/devices/{wrong.mac}/error")
        self.assertEqual((error["service"], error["code"]), ("notifier", "notify"))
        self.assertIn("401", error["message"])
        self.assertIn("credentials", error["message"])
        # the password never travelled on a topic other systems read
        for topic, payload, _ in self.probe.messages:
            if not topic.endswith(("/assignment", "/config", "/resync")):
                self.assertNotIn(b"new-password", payload, topic)
                self.assertNotIn(b"s3cret", payload, topic)
        creds = self.probe.json_on(f"pnp/devices/{right.mac}/resync")[-1]
        self.assertEqual((creds["username"], creds["password"], creds["revision"]), ("1001", "s3cret", 2))
