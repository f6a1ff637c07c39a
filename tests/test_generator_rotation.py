"""Per-device credentials end to end: a real mosquitto, the listener, generator, fileserver and
notifier in this process, and simulated phones on their own 127.x addresses (multicast pinned
to loopback, NETWORK-SAFETY.md rule 2).

The phones are provisioned by Plug and Play: the bootstrap download, then the "reboot" download
from the config server their file names (``{PNP_PUBLIC_URL}c/``) with the HTTP user and password
it gives them (Digest). A ``rotate`` command gives each a new password: the notifier's check-sync
makes the phone fetch the new file with the old password (still accepted until that file was
served), and its next download uses the new one; the old one then no longer works. A ``rearm``
kills the password at once.

It needs the fileserver's credentialed route (issue 13, the fileserver's enrolment work): without
it the module is skipped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import reactor as _reactor

import fileserver.main
import generator.main
import listener.main
import notifier.main
from services.broker import free_port
from services.messages import Config
from tests.support import BrokerCase, eventually, make_settings
from tools.simulate.fleet import Fleet, plan
from tools.simulate.http import get
from tools.simulate.phone import State, Timing, authorization

pytest.importorskip("fileserver.gate", reason="needs the fileserver's credentialed route c/{name}")

FAST = Timing(t1=0.1, notify_timeout=5.0, reboot_delay=0.05, jitter=0.0)
ACCOUNT = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}


class RotationTest(BrokerCase):
    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        self.data_dir = Path(self.mktemp())
        self.sip_port = free_port()
        self.http_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}/"

    @defer.inlineCallbacks
    def run_service(self, name: str, module: Any, **values: str) -> Any:
        settings = make_settings(
            self.broker, self.data_dir / name, extra=module.SETTINGS, sip_interface="127.0.0.1",
            sip_port=str(self.sip_port), http_port=str(self.http_port), public_url=self.base, **values)
        rt = yield self.start_service(name, settings, module.start)
        yield rt.bus.when_subscribed()
        return rt

    def config(self, mac: str) -> Config:
        return Config.from_json(self.probe.on(f"pnp/devices/{mac}/config")[-1])

    @defer.inlineCallbacks
    def status_with(self, url: str, ip: str, user: str, password: str) -> Any:
        """The status of a GET of ``url`` from ``ip`` answering the Digest challenge as given."""
        def once(headers: dict[str, str]) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            get(_reactor, url, headers, ip, 5.0, lambda r, e: d.callback(r))
            return d

        first = yield once({"User-Agent": "test"})
        if first is None or first.status != 401:
            return None if first is None else first.status
        answer = authorization(first.headers.get("www-authenticate", ""), url, user, password)
        second = yield once({"User-Agent": "test", "Authorization": answer or ""})
        return None if second is None else second.status

    @defer.inlineCallbacks
    def refused_soon(self, url: str, ip: str, user: str, password: str, within: float = 5.0) -> Any:
        """True once a GET with these credentials gets a 401 (the fileserver may take a moment to
        process the config that retired them), False if it never does within ``within`` s."""
        deadline = _reactor.seconds() + within
        while _reactor.seconds() < deadline:
            status = yield self.status_with(url, ip, user, password)
            if status == 401:
                return True
            d: defer.Deferred = defer.Deferred()
            _reactor.callLater(0.05, d.callback, None)
            yield d
        return False

    @defer.inlineCallbacks
    def test_provisioned_with_digest_then_rotated_then_rearmed(self) -> Any:
        yield self.run_service("generator", generator.main, generator_settle="0.05")
        yield self.run_service("fileserver", fileserver.main)
        yield self.run_service("notifier", notifier.main, sip_t1="0.05", sip_t2="0.4")
        yield self.run_service("listener", listener.main)
        # A Yealink does not challenge the check-sync NOTIFY (tests/test_resync_challenge.py has a GRP)
        (ident,) = plan(1, ["T46S"], f"127.{random.randint(60, 250)}.{random.randint(0, 200)}.2")
        mac = ident.mac
        self.probe.publish(f"pnp/devices/{mac}/assignment", json.dumps(ACCOUNT), retain=True)
        fleet = Fleet([ident], self.sip_port, FAST, timeout=70, linger=70)
        (phone,) = fleet.phones
        report = fleet.run()
        self.addCleanup(lambda: fleet.stop() if not report.called else None)
        yield eventually(lambda: phone.state == State.PROVISIONED, timeout=30)
        first = self.config(mac)
        assert first.auth is not None
        # the second download came from our credentialed route, with the file's credential
        self.assertIsNotNone(phone.server)
        self.assertEqual(phone.credentials, (mac, first.auth.password))
        self.assertTrue(all(url.startswith(f"{self.base}c/") for url, _ in phone.fetches[-4:]))
        self.assertIn(401, [status for _, status in phone.fetches])  # challenged, then answered

        self.probe.publish(f"pnp/devices/{mac}/rotate",
                           json.dumps({"id": "r1", "at": "2026-12-07T03:00:00.000Z", "v": 1}), retain=True)
        yield eventually(lambda: self.config(mac).revision == first.revision + 1, timeout=10)
        rotated = self.config(mac)
        assert rotated.auth is not None
        self.assertEqual(rotated.auth.previous, first.auth.password)
        # the check-sync: fetched with the old password, then rebooted onto the new one
        yield eventually(lambda: phone.times.resynced is not None and phone.state == State.PROVISIONED,
                         timeout=20)
        self.assertEqual(phone.credentials, (mac, rotated.auth.password))
        url = f"{self.base}c/{mac}.cfg"
        old_refused = yield self.refused_soon(url, ident.ip, mac, first.auth.password)
        new = yield self.status_with(url, ident.ip, mac, rotated.auth.password)
        self.assertEqual((old_refused, new), (True, 200))

        self.probe.publish(f"pnp/devices/{mac}/rearm",
                           json.dumps({"id": "a1", "at": "2026-12-07T03:01:00.000Z", "v": 1}), retain=True)
        yield eventually(lambda: (self.config(mac).enrol or None) and self.config(mac).enrol.rearm == "a1",
                         timeout=10)
        rearmed = self.config(mac)
        assert rearmed.auth is not None
        self.assertIsNone(rearmed.auth.previous)
        # the credential the phone's file held dies with the re-arm, not after a download
        killed = yield self.refused_soon(url, ident.ip, mac, rotated.auth.password)
        self.assertTrue(killed)
        fleet.stop()
        yield report
