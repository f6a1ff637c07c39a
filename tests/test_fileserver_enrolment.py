"""Enrolment without I/O: the state machine (fileserver/enrolment.py), the gate that reads it
(fileserver/gate.py), what the core says of it, and the store that keeps it."""

from __future__ import annotations

import json

from fileserver.catalog import Catalog
from fileserver.core import Announce, Conflict, FileCore, Resolve, SaveEnrolment, enrolment_record
from fileserver.enrolment import (
    CONFLICT, ENROLLING, EXPIRED, PROVISIONED, Enrolments, Key, Record,
)
from fileserver.files import decode_config
from fileserver.gate import Gate
from fileserver.provision import ProvisionTracker
from fileserver.store import Store
from tests.test_fileserver import MAC, OTHER, config

DAY = 86400.0
T0 = 1_800_000_000.0
A1 = Key("a1", "")
A2 = Key("a2", "")
REARMED = Key("a1", "rearm-1")


def book(window: float = 3 * DAY) -> Enrolments:
    return Enrolments(window)


def states(changes) -> list[str]:
    return [c.record.state for c in changes]


# --- the state machine ---

def test_a_first_config_opens_epoch_one_for_the_window():
    e = book()
    (change,) = e.config(MAC, A1, T0)
    r = change.record
    assert (r.epoch, r.state, r.since, r.until, r.candidate, r.bound) == (1, ENROLLING, T0, T0 + 3 * DAY, None, None)
    assert change.before is None and change.visible and not change.conflict
    assert e.enrolling(MAC, T0) and not e.enrolling(OTHER, T0)
    # the same config again (a replay): nothing
    assert e.config(MAC, A1, T0 + 5) == []


def test_discovery_sets_the_candidate_and_a_replay_is_no_conflict():
    e = book()
    e.config(MAC, A1, T0)
    (change,) = e.discovered(MAC, "10.0.0.5", T0 + 1)
    assert change.record.candidate == "10.0.0.5" and not change.visible
    # the retained discovery replayed after a reconnect, or the phone's next SUBSCRIBE
    assert e.discovered(MAC, "10.0.0.5", T0 + 2) == []


def test_a_second_address_while_enrolling_is_a_conflict_in_either_order():
    for first, second in (("10.0.0.5", "10.0.0.66"), ("10.0.0.66", "10.0.0.5")):
        e = book()
        e.config(MAC, A1, T0)
        e.discovered(MAC, first, T0 + 1)
        (change,) = e.discovered(MAC, second, T0 + 2)
        r = change.record
        assert (r.state, r.addresses) == (CONFLICT, (first, second))
        assert change.conflict and change.visible and not r.enrolling(T0 + 2)
        # nothing moves it but a re-arm: more discoveries, downloads, the same config
        assert e.discovered(MAC, "10.0.0.7", T0 + 3) == []
        assert e.bootstrap_served(MAC, first, T0 + 3) == []
        assert e.provisioned(MAC, T0 + 3, "x") == []
        (kept,) = e.config(MAC, A2, T0 + 4)  # a changed assignment is noted, the conflict stays
        assert (kept.record.state, kept.record.epoch, kept.record.key) == (CONFLICT, 1, A2)


def test_the_bound_address_conflicts_with_any_other_discovery():
    e = book()
    e.config(MAC, A1, T0)
    (change,) = e.bootstrap_served(MAC, "10.0.0.5", T0 + 1)
    assert change.record.bound == "10.0.0.5"
    assert e.bootstrap_served(MAC, "10.0.0.9", T0 + 2) == []  # the first completed one binds
    assert e.discovered(MAC, "10.0.0.5", T0 + 3)[0].record.state == ENROLLING
    assert e.discovered(MAC, "10.0.0.9", T0 + 4)[0].record.addresses == ("10.0.0.5", "10.0.0.9")


def test_provisioned_closes_the_epoch_and_later_discoveries_do_nothing():
    e = book()
    e.config(MAC, A1, T0)
    e.discovered(MAC, "10.0.0.5", T0 + 1)
    (change,) = e.provisioned(MAC, T0 + 2, "fetched with its own credentials")
    assert (change.record.state, change.visible) == (PROVISIONED, True)
    # a forged SUBSCRIBE for a provisioned phone from elsewhere: nothing at all
    assert e.discovered(MAC, "10.0.0.66", T0 + 3) == []
    assert e.provisioned(MAC, T0 + 4, "again") == []


def test_an_assignment_change_opens_a_new_epoch_that_keeps_the_bound_address():
    e = book()
    e.config(MAC, A1, T0)
    e.discovered(MAC, "10.0.0.5", T0 + 1)
    e.bootstrap_served(MAC, "10.0.0.5", T0 + 2)
    e.provisioned(MAC, T0 + 3, "x")
    (change,) = e.config(MAC, A2, T0 + 10)
    r = change.record
    assert (r.epoch, r.state, r.candidate, r.bound, r.since, r.key) == (2, ENROLLING, None, "10.0.0.5", T0 + 10, A2)
    assert change.visible
    # the forged discovery of item 2 cannot re-pin it: it is a conflict
    assert e.discovered(MAC, "10.0.0.66", T0 + 11)[0].record.state == CONFLICT


def test_a_rearm_clears_candidate_bound_and_conflict():
    e = book()
    e.config(MAC, A1, T0)
    e.bootstrap_served(MAC, "10.0.0.5", T0 + 1)
    e.discovered(MAC, "10.0.0.66", T0 + 2)
    (change,) = e.config(MAC, REARMED, T0 + 10)
    r = change.record
    assert (r.epoch, r.state, r.candidate, r.bound, r.addresses) == (2, ENROLLING, None, None, ())
    assert change.resolved and r.reason == "re-armed"
    # a re-arm of a provisioned device too
    e.provisioned(MAC, T0 + 11, "x")
    (again,) = e.config(MAC, Key("a1", "rearm-2"), T0 + 20)
    assert (again.record.epoch, again.record.state) == (3, ENROLLING)


def test_configs_without_enrol_keep_the_first_epoch_and_a_new_generator_opens_one():
    e = book()
    assert e.config(MAC, None, T0)[0].record.epoch == 1
    e.bootstrap_served(MAC, "10.0.0.5", T0 + 1)
    assert e.config(MAC, None, T0 + 2) == []
    (change,) = e.config(MAC, A1, T0 + 3)
    assert (change.record.epoch, change.record.bound) == (2, "10.0.0.5")


def test_the_window_expires_lazily_and_by_the_sweep():
    e = book(window=100)
    e.config(MAC, A1, T0)
    e.config(OTHER, A1, T0 + 50)
    assert e.enrolling(MAC, T0 + 99) and not e.enrolling(MAC, T0 + 100)
    # an event after the window: the device expires first, then nothing
    assert states(e.discovered(MAC, "10.0.0.5", T0 + 100)) == [EXPIRED]
    assert e.get(MAC).candidate is None
    assert states(e.sweep(T0 + 149)) == []
    (change,) = e.sweep(T0 + 150)
    assert (change.record.mac, change.record.state, change.visible) == (OTHER, EXPIRED, True)
    assert e.sweep(T0 + 500) == []
    # a new assignment enrols it again
    assert e.config(MAC, A2, T0 + 600)[-1].record.state == ENROLLING


def test_a_record_from_the_retained_topic_takes_the_next_configs_key():
    e = book()
    taken = Record(MAC, 7, PROVISIONED, T0, T0 + DAY, T0 + 5, "10.0.0.5", "10.0.0.5")
    (change,) = e.adopt(taken)
    assert change.record.adopted
    (keyed,) = e.config(MAC, A1, T0 + 10)
    assert (keyed.record.epoch, keyed.record.state, keyed.record.key, keyed.record.adopted) == \
        (7, PROVISIONED, A1, False)
    assert e.adopt(taken) == []  # never over a record we hold


# --- the core: what the topics say ---

def core(window: float = 3 * DAY) -> FileCore:
    return FileCore(Catalog("s" * 32, "http://files.example/"), ProvisionTracker(), set(),
                    Enrolments(window), "fs1")


def assign(c: FileCore, now: float, key: tuple[str, str] | None = ("a1", ""), **kw) -> list:
    return c.config(MAC, config(enrol=key, **kw), None, False, now)


def announced(effects, kind: str) -> list[dict]:
    return [json.loads(e.payload) for e in effects if isinstance(e, Announce) and e.kind == kind]


def test_the_core_announces_enrolment_and_the_published_url_of_the_epoch():
    c = core()
    effects = assign(c, T0)
    (enrolment,) = announced(effects, "enrolment")
    assert {k: enrolment[k] for k in ("state", "epoch", "bound", "candidate", "addresses", "mac", "v")} == \
        {"state": "enrolling", "epoch": 1, "bound": None, "candidate": None, "addresses": [], "mac": MAC, "v": 1}
    assert enrolment["since"].endswith("Z") and enrolment["until"] > enrolment["since"]
    (published,) = announced(effects, "published")
    assert (published["enrolling"], published["epoch"]) == (True, 1)
    url = published["url"]
    assert c.catalog.by_token(url.split("/")[-2]) is not None
    # a discovery: enrolment says so, published does not change
    effects = c.discovered(MAC, "10.0.0.5", T0 + 1)
    assert announced(effects, "enrolment")[0]["candidate"] == "10.0.0.5"
    assert announced(effects, "published") == []
    # a new assignment: a new URL, the old token forgotten
    (published,) = announced(assign(c, T0 + 2, ("a2", "")), "published")
    assert published["epoch"] == 2 and published["url"] != url
    assert c.catalog.by_token(url.split("/")[-2]) is None


def test_a_held_candidate_counts_and_is_saved_at_once_and_is_announced_at_the_release():
    c = core()
    assign(c, T0)
    effects = c.discovered(MAC, "10.0.0.5", T0 + 1, hold=True)
    assert c.enrolments.get(MAC).candidate == "10.0.0.5"  # the gate pins it now
    # saved now: a restart after a crash still pins it (a spoofed SUBSCRIBE is then a conflict)
    (saved,) = [e for e in effects if isinstance(e, SaveEnrolment)]
    assert saved.record.candidate == "10.0.0.5"
    assert announced(effects, "enrolment") == []
    effects = c.release()
    assert [e for e in effects if isinstance(e, SaveEnrolment)] == []
    assert announced(effects, "enrolment")[0]["candidate"] == "10.0.0.5"
    assert c.release() == []
    # the same address again, and a discovery that moves more than the candidate: not held
    assert c.discovered(MAC, "10.0.0.5", T0 + 2, hold=True) == []
    effects = c.discovered(MAC, "10.0.0.66", T0 + 3, hold=True)
    assert [type(e) for e in effects if isinstance(e, Conflict)] == [Conflict]


def test_a_move_before_the_release_saves_the_held_candidate_with_it():
    c = core()
    assign(c, T0)
    c.discovered(MAC, "10.0.0.5", T0 + 1, hold=True)
    # the conflict's record holds the first address: saved, announced, nothing left to release
    effects = c.discovered(MAC, "10.0.0.66", T0 + 2, hold=True)
    (saved,) = [e for e in effects if isinstance(e, SaveEnrolment)]
    assert (saved.record.state, saved.record.candidate) == (CONFLICT, "10.0.0.5")
    assert announced(effects, "enrolment")[0]["addresses"] == ["10.0.0.5", "10.0.0.66"]
    assert c.release() == []
    # a device unassigned while its candidate waits: its removal is what is saved
    c2 = core()
    assign(c2, T0)
    c2.discovered(MAC, "10.0.0.5", T0 + 1, hold=True)
    c2.config(MAC, None, None, True, T0 + 2)
    assert c2.release() == []


def test_a_conflict_is_an_error_naming_both_and_published_stops_enrolling():
    c = core()
    assign(c, T0)
    c.discovered(MAC, "10.0.0.5", T0 + 1)
    effects = c.discovered(MAC, "10.0.0.66", T0 + 2)
    (conflict,) = [e for e in effects if isinstance(e, Conflict)]
    assert conflict.addresses == ("10.0.0.5", "10.0.0.66")
    assert "10.0.0.5" in conflict.message and "10.0.0.66" in conflict.message
    assert f"pnp assign --rearm {MAC}" in conflict.message
    assert announced(effects, "published")[0]["enrolling"] is False
    assert announced(effects, "enrolment")[0]["addresses"] == ["10.0.0.5", "10.0.0.66"]
    # a refused config replaces the error; the next good one puts the conflict's back
    c.config(MAC, config(enrol=("a1", ""), sha="0" * 64, revision=2), None, False, T0 + 3)
    again = assign(c, T0 + 4, revision=3)
    assert [type(e) for e in again if isinstance(e, (Conflict, Resolve))] == [Conflict]
    # the re-arm clears it, and enrols it again from nowhere
    effects = assign(c, T0 + 5, ("a1", "r1"), revision=4)
    assert Resolve(MAC) in effects
    assert announced(effects, "published")[0]["enrolling"] is True
    assert announced(effects, "enrolment")[0]["candidate"] is None


def test_downloads_bind_and_provision_only_through_the_main_file():
    c = core()
    files = config()["files"] + [{**config()["files"][0], "name": "common.cfg"}]
    c.config(MAC, {**config(enrol=("a1", "")), "files": files}, None, False, T0)
    device = c.catalog.devices[MAC]
    main, common = device.files[f"cfg{MAC}.xml"], device.files["common.cfg"]
    assert device.main is main
    c.served(device, common, 200, "10.0.0.5", "", "at", T0 + 1, "bootstrap")
    assert c.enrolments.get(MAC).bound is None
    c.served(device, main, 304, "10.0.0.5", "", "at", T0 + 1, "bootstrap")
    assert c.enrolments.get(MAC).bound is None  # a 304 served no file
    effects = c.served(device, main, 200, "10.0.0.5", "", "at", T0 + 2, "bootstrap")
    assert c.enrolments.get(MAC).bound == "10.0.0.5"
    assert effects[-1].fetched.auth == "bootstrap" and effects[-1].fetched.epoch == 1
    c.served(device, common, 200, "10.0.0.5", "", "at", T0 + 3, "device")
    assert c.enrolments.get(MAC).state == ENROLLING
    effects = c.served(device, main, 200, "10.0.0.5", "", "at", T0 + 4, "device")
    assert c.enrolments.get(MAC).state == PROVISIONED
    assert announced(effects, "published")[0]["enrolling"] is False


def test_another_instance_s_downloads_move_enrolment_in_the_same_epoch_only():
    c = core()
    assign(c, T0)
    event = {"file": f"cfg{MAC}.xml", "sha256": c.catalog.devices[MAC].main.sha256, "status": 200,
             "server": "fs2", "client": "10.0.0.5", "auth": "bootstrap", "epoch": 1}
    c.fetched_elsewhere(MAC, {**event, "epoch": 0}, T0 + 1)
    assert c.enrolments.get(MAC).bound is None
    c.fetched_elsewhere(MAC, event, T0 + 1)
    assert c.enrolments.get(MAC).bound == "10.0.0.5"
    c.fetched_elsewhere(MAC, {**event, "auth": "device"}, T0 + 2)
    assert c.enrolments.get(MAC).state == PROVISIONED


def test_the_sweep_expires_and_says_so():
    c = core(window=60)
    assign(c, T0)
    assert c.sweep(T0 + 59) == []
    effects = c.sweep(T0 + 60)
    assert announced(effects, "enrolment")[0]["state"] == "expired"
    assert announced(effects, "published")[0]["enrolling"] is False


def test_a_rebuilt_store_takes_the_epoch_back_from_the_retained_topic():
    old = core()
    assign(old, T0)
    old.discovered(MAC, "10.0.0.5", T0 + 1)
    old.served(old.catalog.devices[MAC], old.catalog.devices[MAC].main, 200, "10.0.0.5", "", "at",
               T0 + 2, "bootstrap")
    (payload,) = [e.payload for e in old.discovered(MAC, "10.0.0.6", T0 + 3)
                  if isinstance(e, Announce) and e.kind == "enrolment"]
    new = core()
    assert [type(e) for e in new.enrolment(MAC, payload)][:1] == [SaveEnrolment]
    assign(new, T0 + 10)  # the retained config, replayed after the enrolment: no new epoch
    r = new.enrolments.get(MAC)
    assert (r.epoch, r.state, r.bound, r.addresses, r.key) == (1, CONFLICT, "10.0.0.5",
                                                               ("10.0.0.5", "10.0.0.6"), A1)
    # garbage in the retained topic is not taken
    for junk in (b"{", b"[]", json.dumps({"state": "odd", "epoch": 1, "since": "x", "until": "y"}).encode()):
        assert enrolment_record(OTHER, junk) is None


# --- the gate ---

def test_the_gate_serves_the_bootstrap_url_to_the_right_address_while_enrolling():
    c = core()
    assign(c, T0)
    device = c.catalog.devices[MAC]
    pinned, loose = Gate(c.enrolments, c.tracker, True), Gate(c.enrolments, c.tracker, False)
    assert pinned.bootstrap(device, "10.0.0.9", T0) is None  # no address known yet
    c.discovered(MAC, "10.0.0.5", T0 + 1)
    assert pinned.bootstrap(device, "10.0.0.5", T0 + 1) is None
    assert "own address" in pinned.bootstrap(device, "10.0.0.9", T0 + 1)
    assert loose.bootstrap(device, "10.0.0.9", T0 + 1) is None
    assert "not enrolling" in pinned.bootstrap(device, "10.0.0.5", T0 + 3 * DAY + 1)
    c.discovered(MAC, "10.0.0.66", T0 + 2)
    for gate in (pinned, loose):
        for ip in ("10.0.0.5", "10.0.0.66"):
            assert "conflict" in gate.bootstrap(device, ip, T0 + 2)


def test_the_previous_password_works_until_the_new_file_was_served():
    c = core()
    c.config(MAC, config(enrol=("a1", ""), password="new", previous="old"), None, False, T0)
    device = c.catalog.devices[MAC]
    gate = Gate(c.enrolments, c.tracker, True)
    assert gate.passwords(device) == ("new", "old")
    c.served(device, device.main, 304, "10.0.0.5", "", "at", T0 + 1, "device")
    assert gate.passwords(device) == ("new", "old")  # a 304 proves nothing was fetched
    c.served(device, device.main, 200, "10.0.0.5", "", "at", T0 + 2, "device")
    assert gate.passwords(device) == ("new",)
    c.config(MAC, config(enrol=("a1", ""), password="newer", previous="new", revision=2,
                         text="<gs_provision>P270=B</gs_provision>\n"), None, False, T0 + 3)
    assert gate.passwords(c.catalog.devices[MAC]) == ("newer", "new")
    # no credentials in the config: the credentialed URL serves no one
    c.config(OTHER, config(OTHER), None, False, T0)
    assert gate.passwords(c.catalog.devices[OTHER]) == ()


def test_a_config_with_bad_auth_or_enrol_is_refused_naming_the_field():
    import pytest
    from fileserver.files import Rejected
    for data, field in (({"auth": "x"}, "auth"), ({"auth": {"user": OTHER, "password": "p"}}, "auth.user"),
                        ({"auth": {"user": MAC, "password": ""}}, "auth.password"),
                        ({"auth": {"user": MAC, "password": "p\n"}}, "auth.password"),
                        ({"auth": {"user": MAC, "password": "p", "previous": 5}}, "auth.previous"),
                        ({"enrol": {"rearm": ""}}, "enrol"), ({"enrol": []}, "enrol")):
        with pytest.raises(Rejected) as caught:
            decode_config(MAC, {**config(), **data})
        # the message names the field (a typed Config may refuse it before our own checks)
        assert caught.value.code == "payload" and field in str(caught.value), (data, str(caught.value))


# --- the store ---

def test_the_store_keeps_enrolment_and_credentials_across_a_restart(tmp_path):
    store = Store(tmp_path / "fs.db")
    device = decode_config(MAC, config(enrol=("a1", "r"), password="pw", previous="old"))
    store.put(device)
    e = book()
    e.config(MAC, A1, T0)
    e.discovered(MAC, "10.0.0.5", T0 + 1)
    (change,) = e.discovered(MAC, "10.0.0.6", T0 + 2)
    store.set_enrolment(MAC, change.record)
    store.flush()
    store.close()
    again = Store(tmp_path / "fs.db")
    assert again.load() == [device]
    assert again.enrolments() == {MAC: change.record}
    again.set_enrolment(MAC, None)
    again.flush()
    assert again.enrolments() == {}
    again.close()


def test_an_older_store_is_migrated_in_place_and_its_devices_enrol(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE devices (mac TEXT PRIMARY KEY, revision INTEGER, vendor TEXT, model TEXT,
                              template TEXT, notify_path TEXT);
        CREATE TABLE files (mac TEXT, name TEXT, content_type TEXT, content BLOB, sha256 TEXT,
                            size INTEGER, PRIMARY KEY (mac, name));
        CREATE TABLE fetches (mac TEXT, name TEXT, served TEXT, provisioned TEXT, PRIMARY KEY (mac, name));
        CREATE TABLE discovered (mac TEXT PRIMARY KEY, ip TEXT);
        CREATE TABLE errors (mac TEXT PRIMARY KEY);
    """)
    for mac in (MAC, OTHER):
        d = decode_config(mac, config(mac))
        f = d.main
        db.execute("INSERT INTO devices VALUES (?, 1, 'grandstream', 'GRP2614', 't', '')", (mac,))
        db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                   (mac, f.name, f.content_type, f.body, f.sha256, len(f.body)))
    # MAC's phone came back for its file before the upgrade
    db.execute("INSERT INTO fetches VALUES (?, ?, ?, ?)", (MAC, f"cfg{MAC}.xml",
               decode_config(MAC, config()).main.sha256, decode_config(MAC, config()).main.sha256))
    db.commit()
    db.close()
    store = Store(path)
    devices = store.load()
    assert sorted(d.mac for d in devices) == [OTHER, MAC] and devices[0].password is None
    c = FileCore(Catalog("s" * 32, "http://x/"), ProvisionTracker(store.fetch_states()), set(),
                 Enrolments(DAY, store.enrolments()), "fs1")
    c.load(devices, T0)
    assert (c.enrolments.get(MAC).state, c.enrolments.get(OTHER).state) == (PROVISIONED, ENROLLING)
    store.close()


def test_a_retained_enrolment_without_a_config_is_cleared_after_the_replay():
    old = core()
    (payload,) = [e.payload for e in assign(old, T0) if isinstance(e, Announce) and e.kind == "enrolment"]
    new = core()
    new.connected()
    new.enrolment(OTHER, payload.replace(MAC.encode(), OTHER.encode()))
    assert new.enrolments.get(OTHER) is not None
    effects = new.replayed(lost_ours=False)
    assert SaveEnrolment(OTHER, None) in effects and Announce(OTHER, b"", "enrolment") in effects
    assert new.enrolments.get(OTHER) is None
