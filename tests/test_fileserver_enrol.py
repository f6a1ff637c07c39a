"""Enrolment over a real broker and real HTTP: the bootstrap URL while enrolling, the device's
own Digest credentials on ``c/{name}`` in every state, conflicts, rotation and bans."""

from __future__ import annotations

import hashlib
import json
import re

from twisted.internet import defer

from tests.support import eventually
from tests.test_fileserver import GS_UA, MAC, OTHER, FileserverCase, config, fetch

PHONE, ATTACKER = "127.0.0.2", "127.0.0.66"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest(challenge: str, uri: str, user: str, password: str, method: str = "GET") -> str:
    """The Authorization a phone answers a Digest challenge with (RFC 7616, MD5, qop=auth)."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    nc, cnonce = "00000001", "0a4f113b"
    ha1 = _md5(f"{user}:{fields['realm']}:{password}")
    response = _md5(f"{ha1}:{fields['nonce']}:{nc}:{cnonce}:auth:{_md5(f'{method}:{uri}')}")
    return (f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", opaque="{fields["opaque"]}", qop=auth, nc={nc}, '
            f'cnonce="{cnonce}", algorithm=MD5')


class EnrolCase(FileserverCase):
    def cred_url(self, name: str = f"cfg{MAC}.xml") -> str:
        return f"{self.base()}/c/{name}"

    @defer.inlineCallbacks
    def cred_fetch(self, user: str, password: str, name: str = f"cfg{MAC}.xml",
                   source: str = PHONE, headers: dict | None = None, uri: str | None = None):
        """Challenged, then answered: what a phone with these credentials gets."""
        url = self.cred_url(name)
        status, got, _ = yield fetch(url, source=source)
        if status != 401:
            return status, got, b""
        path = f"/c/{name}"
        answer = digest(got["www-authenticate"], uri or path, user, password)
        result = yield fetch(url, source=source, headers={**(headers or {}), "Authorization": answer})
        return result

    def discover(self, ip: str, mac: str = MAC) -> None:
        self.probe.publish(self.topic("discovered", mac), json.dumps({"mac": mac, "ip": ip}), retain=True)

    def enrolment(self, state: str, mac: str = MAC, timeout: float = 5.0, **match):
        def found():
            last = self.probe.last(self.topic("enrolment", mac))
            return last if last and last["state"] == state and all(
                last.get(k) == v for k, v in match.items()) else None
        return eventually(found, timeout=timeout)


class CredentialedTest(EnrolCase):
    @defer.inlineCallbacks
    def test_a_phone_enrols_then_fetches_with_its_own_credentials_and_is_provisioned(self):
        rt = yield self.start()
        published = yield self.assign(config(enrol=("a1", ""), password="pw-1"))
        self.assertEqual((published["enrolling"], published["epoch"]), (True, 1))
        url = published["files"][0]["url"]
        self.discover(PHONE)
        yield self.enrolment("enrolling", candidate=PHONE)
        # the bootstrap download from the phone's address; it binds the device to it
        status, _, body = yield fetch(url, headers={"User-Agent": GS_UA})
        self.assertEqual((status, b"Alice" in body), (200, True))
        yield self.enrolment("enrolling", bound=PHONE)
        # the reboot: from the config server its file names, with its credentials
        status, headers, body = yield fetch(self.cred_url())
        self.assertEqual((status, b"Alice" in body), (401, False))
        self.assertTrue(headers["www-authenticate"].startswith('Digest realm="pnp", qop="auth"'))
        status, _, body = yield self.cred_fetch(MAC, "pw-1")
        self.assertEqual((status, b"Alice" in body), (200, True))
        enrolment = yield self.enrolment("provisioned")
        self.assertEqual((enrolment["epoch"], enrolment["bound"], enrolment["reason"]),
                         (1, PHONE, "fetched with its own credentials"))
        fetched = yield eventually(lambda: (self.probe.last(self.topic("fetched")) or {}).get("auth") == "device"
                                   and self.probe.last(self.topic("fetched")))
        self.assertEqual((fetched["epoch"], fetched["status"]), (1, 200))
        published = yield eventually(lambda: self.probe.last(self.topic("published"))["enrolling"] is False
                                     and self.probe.last(self.topic("published")))
        # item 1 of issue 13: the URL alone gives nothing now, from any address
        for source in (PHONE, ATTACKER):
            status, _, body = yield fetch(url, source=source, headers={"User-Agent": "curl/8.0"})
            self.assertEqual((status, b"Alice" in body), (403, False))
        # a forged SUBSCRIBE for the provisioned phone changes nothing
        self.discover(ATTACKER)
        status, _, _ = yield fetch(url, source=ATTACKER)
        self.assertEqual(status, 403)
        # the phone's own credentials keep working, from anywhere (it may move)
        status, _, body = yield self.cred_fetch(MAC, "pw-1", source="127.0.0.3")
        self.assertEqual((status, b"Alice" in body), (200, True))
        # a restart keeps all of it and says nothing again
        count = len(self.probe.on(self.topic("enrolment")))
        yield rt.stop()
        yield self.start()
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 403)
        status, _, _ = yield self.cred_fetch(MAC, "pw-1")
        self.assertEqual(status, 200)
        self.assertEqual(len(self.probe.on(self.topic("enrolment"))), count)

    @defer.inlineCallbacks
    def test_wrong_mac_file_password_or_uri_get_no_file(self):
        yield self.start()
        yield self.assign(config(enrol=("a1", ""), password="pw-mac"))
        yield self.assign(config(OTHER, "<gs_provision>P270=Bob</gs_provision>\n", enrol=("b1", ""),
                                 password="pw-other"), OTHER)
        cases = [
            ((MAC, "wrong"), f"cfg{MAC}.xml", 401),
            (("000b82000000", "pw-mac"), f"cfg{MAC}.xml", 401),  # no such device
            ((OTHER, "pw-mac"), f"cfg{MAC}.xml", 401),  # MAC's password under OTHER's name
            ((OTHER, "pw-other"), f"cfg{MAC}.xml", 404),  # OTHER's own, for MAC's file
            ((MAC, "pw-mac"), "nothing.xml", 404),
        ]
        for (user, password), name, expected in cases:
            status, _, body = yield self.cred_fetch(user, password, name)
            self.assertEqual((status, b"Alice" in body), (expected, False), (user, password, name))
        # a digest that covers another URI is no proof for this one
        status, _, _ = yield self.cred_fetch(MAC, "pw-mac", uri=f"/c/cfg{OTHER}.xml")
        self.assertEqual(status, 401)
        # nor is Basic with the right password
        import base64
        basic = base64.b64encode(f"{MAC}:pw-mac".encode()).decode()
        status, _, _ = yield fetch(self.cred_url(), headers={"Authorization": f"Basic {basic}"})
        self.assertEqual(status, 401)
        # each device with its own
        status, _, body = yield self.cred_fetch(OTHER, "pw-other", f"cfg{OTHER}.xml")
        self.assertEqual((status, b"Bob" in body), (200, True))
        # a config without credentials: its credentialed URL serves no one
        yield self.assign(config("000b82999999", enrol=("c1", "")), "000b82999999")
        status, _, _ = yield self.cred_fetch("000b82999999", "", "cfg000b82999999.xml")
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_a_rotated_password_keeps_the_old_one_until_the_new_file_was_fetched(self):
        yield self.start()
        yield self.assign(config(enrol=("a1", ""), password="old"))
        yield self.assign(config(text="<gs_provision>P270=Rotated</gs_provision>\n", revision=2,
                                 enrol=("a1", ""), password="new", previous="old"))
        # the phone still holds the old password and fetches the new file with it
        status, _, body = yield self.cred_fetch(MAC, "old")
        self.assertEqual((status, b"Rotated" in body), (200, True))
        # it now holds the new one; the old one is refused
        status, _, _ = yield self.cred_fetch(MAC, "old")
        self.assertEqual(status, 401)
        status, _, _ = yield self.cred_fetch(MAC, "new")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_an_old_password_once_moved_past_stays_refused_in_later_revisions(self):
        # the generator keeps `previous` in every config until the next rotation: an assignment
        # change after the phone took the new password must not revive the old one
        rt = yield self.start()
        yield self.assign(config(enrol=("a1", ""), password="old"))
        yield self.assign(config(text="<gs_provision>P270=Rotated</gs_provision>\n", revision=2,
                                 enrol=("a1", ""), password="new", previous="old"))
        status, _, _ = yield self.cred_fetch(MAC, "old")
        self.assertEqual(status, 200)
        yield self.assign(config(text="<gs_provision>P270=Changed</gs_provision>\n", revision=3,
                                 enrol=("a2", ""), password="new", previous="old"))
        status, _, _ = yield self.cred_fetch(MAC, "old")
        self.assertEqual(status, 401)
        yield rt.stop()  # and a restart does not forget it
        yield self.start()
        status, _, _ = yield self.cred_fetch(MAC, "old")
        self.assertEqual(status, 401)
        status, _, body = yield self.cred_fetch(MAC, "new")
        self.assertEqual((status, b"Changed" in body), (200, True))


class ConflictTest(EnrolCase):
    @defer.inlineCallbacks
    def test_a_second_address_is_a_conflict_that_only_a_rearm_ends(self):
        yield self.start()
        published = yield self.assign(config(enrol=("a1", ""), password="pw"))
        url = published["files"][0]["url"]
        # the race of issue 13 item 3: the attacker's forged SUBSCRIBE first, the phone second
        self.discover(ATTACKER)
        yield self.enrolment("enrolling", candidate=ATTACKER)
        self.discover(PHONE)
        enrolment = yield self.enrolment("conflict")
        self.assertEqual(enrolment["addresses"], [ATTACKER, PHONE])
        error = yield eventually(lambda: self.probe.last(self.topic("error")))
        self.assertEqual((error["service"], error["code"], error["addresses"]),
                         ("fileserver", "conflict", [ATTACKER, PHONE]))
        self.assertIn(f"pnp assign --rearm {MAC}", error["message"])
        yield eventually(lambda: self.probe.last(self.topic("published"))["enrolling"] is False)
        # nothing goes to anyone on the bootstrap URL
        for source in (ATTACKER, PHONE):
            status, _, body = yield fetch(url, source=source)
            self.assertEqual((status, b"Alice" in body), (403, False))
        # the credentials we gave still work (they prove a file we served)
        status, _, _ = yield self.cred_fetch(MAC, "pw")
        self.assertEqual(status, 200)
        # the operator re-arms: a new epoch, a new URL, a new password; the error is cleared
        published = yield self.assign(config(enrol=("a1", "rearm-1"), password="pw2", revision=2))
        self.assertEqual((published["enrolling"], published["epoch"]), (True, 2))
        yield eventually(lambda: self.probe.on(self.topic("error"))[-1] == b"")
        yield self.enrolment("enrolling", epoch=2, candidate=None, bound=None)
        status, _, _ = yield fetch(url, source=PHONE)
        self.assertEqual(status, 404)  # the old epoch's URL is dead
        status, _, _ = yield self.cred_fetch(MAC, "pw")
        self.assertEqual(status, 401)  # a re-arm keeps no previous password
        self.discover("127.0.0.3")  # the phone, rebooted on its own address
        yield self.enrolment("enrolling", epoch=2, candidate="127.0.0.3")
        status, _, body = yield fetch(published["files"][0]["url"], source="127.0.0.3")
        self.assertEqual((status, b"Alice" in body), (200, True))

    @defer.inlineCallbacks
    def test_a_forged_discovery_never_repins_the_bound_device(self):
        yield self.start()
        published = yield self.assign(config(enrol=("a1", ""), password="pw"))
        url = published["files"][0]["url"]
        self.discover(PHONE)
        yield self.enrolment("enrolling", candidate=PHONE)
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 200)
        yield self.enrolment("enrolling", bound=PHONE)
        # issue 13 item 2: the forged discovery from elsewhere
        self.discover(ATTACKER)
        yield self.enrolment("conflict")
        status, _, body = yield fetch(url, source=ATTACKER)
        self.assertEqual((status, b"Alice" in body), (403, False))

    @defer.inlineCallbacks
    def test_the_window_closes_the_bootstrap_url(self):
        yield self.start(enrol_window="1s")
        published = yield self.assign(config(enrol=("a1", ""), password="pw"))
        enrolment = yield self.enrolment("expired", timeout=8)
        self.assertEqual(enrolment["reason"], "enrolment window passed without provisioning")
        yield eventually(lambda: self.probe.last(self.topic("published"))["enrolling"] is False)
        status, _, _ = yield fetch(published["files"][0]["url"])
        self.assertEqual(status, 403)
        status, _, _ = yield self.cred_fetch(MAC, "pw")
        self.assertEqual(status, 200)


class BanTest(EnrolCase):
    @defer.inlineCallbacks
    def test_guessed_credentials_are_banned_and_the_phone_behind_the_same_address_is_not(self):
        nat = "127.0.0.7"
        yield self.start(not_found_limit="5", ban_seconds="300")
        published = yield self.assign(config(enrol=("a1", ""), password="right"))
        yield self.assign(config(OTHER, enrol=("b1", ""), password="other"), OTHER)
        statuses = []
        for _ in range(7):
            status, _, _ = yield self.cred_fetch(MAC, "guess", source=nat)
            statuses.append(status)
        self.assertEqual((statuses[0], statuses[-1]), (401, 429))
        # the challenge is no secret: a banned address still gets it
        status, headers, _ = yield fetch(self.cred_url(), source=nat)
        self.assertEqual(status, 401)
        # the bootstrap path of an enrolling device is served to it
        status, _, body = yield fetch(published["files"][0]["url"], source=nat)
        self.assertEqual((status, b"Alice" in body), (200, True))
        # valid credentials are never banned
        status, _, body = yield self.cred_fetch(MAC, "right", source=nat)
        self.assertEqual((status, b"Alice" in body), (200, True))
        # the device is provisioned now: its bootstrap path is no proof any more
        yield self.enrolment("provisioned")
        status, _, _ = yield fetch(published["files"][0]["url"], source=nat)
        self.assertEqual(status, 429)
        # the guesser stays refused
        status, _, _ = yield self.cred_fetch(MAC, "guess", source=nat)
        self.assertEqual(status, 429)
        status, _, _ = yield fetch(f"{self.base()}/nothing", source=nat)
        self.assertEqual(status, 429)


class RebuiltTest(EnrolCase):
    @defer.inlineCallbacks
    def test_a_candidate_is_announced_and_one_still_held_at_a_stop_is_saved(self):
        rt = yield self.start()
        yield self.assign(config(enrol=("a1", ""), password="pw"))
        # a discovery the broker does not keep: after the restart only the store can name it
        self.probe.publish(self.topic("discovered"), json.dumps({"mac": MAC, "ip": PHONE}))
        enrolments = rt.component.service.core.enrolments
        yield eventually(lambda: enrolments.get(MAC).candidate == PHONE)
        yield rt.stop()  # most likely within the 0.1 s the candidate waits to be announced
        yield self.enrolment("enrolling", candidate=PHONE)
        rt = yield self.start()
        self.assertEqual(rt.component.service.core.enrolments.get(MAC).candidate, PHONE)

    @defer.inlineCallbacks
    def test_a_lost_store_takes_each_device_s_enrolment_back_from_the_broker(self):
        rt = yield self.start()
        published = yield self.assign(config(enrol=("a1", ""), password="pw"))
        url = published["files"][0]["url"]
        yield self.assign(config(OTHER, enrol=("b1", ""), password="pw2"), OTHER)
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 200)
        status, _, _ = yield self.cred_fetch(MAC, "pw")
        self.assertEqual(status, 200)
        provisioned = yield self.enrolment("provisioned")
        enrolling = yield self.enrolment("enrolling", OTHER)
        yield rt.stop()
        for path in self.data.glob("fileserver.db*"):
            path.unlink()
        yield self.start()
        # the same epochs and states, taken from the retained enrolment, not a fresh epoch 1
        rt = self.runtimes[-1]
        enrolments = rt.component.service.core.enrolments
        yield eventually(lambda: enrolments.get(MAC) and enrolments.get(MAC).key is not None
                         and enrolments.get(OTHER) and enrolments.get(OTHER).key is not None)
        self.assertEqual((enrolments.get(MAC).state, enrolments.get(MAC).bound), ("provisioned", PHONE))
        self.assertEqual(enrolments.get(OTHER).state, "enrolling")
        self.assertEqual(self.probe.last(self.topic("enrolment")), provisioned)
        self.assertEqual(self.probe.last(self.topic("enrolment", OTHER)), enrolling)
        status, _, _ = yield fetch(url)
        self.assertEqual(status, 403)
        status, _, _ = yield self.cred_fetch(MAC, "pw")
        self.assertEqual(status, 200)
