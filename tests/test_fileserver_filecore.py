"""The fileserver's sans-I/O core: messages in, effects out, no broker, socket or database."""

from __future__ import annotations

import json

from fileserver.catalog import Catalog
from fileserver.core import (
    Announce, FileCore, Missing, Refuse, Remove, Report, Resolve, Save, SaveEnrolment, SaveFetch,
)
from fileserver.enrolment import Enrolments
from fileserver.provision import ProvisionTracker
from tests.test_fileserver import MAC, OTHER, config

SECRET = "s" * 32
AT = "2026-01-01T00:00:00Z"
NOW = 1_800_000_000.0


def core(errored: set[str] | None = None) -> FileCore:
    return FileCore(Catalog(SECRET, "http://files.example/"), ProvisionTracker(), errored or set(),
                    Enrolments(3 * 86400), "fs1")


def files_only(effects: list) -> list:
    """The effects on the files and their topics (enrolment has its own tests)."""
    return [e for e in effects if not isinstance(e, SaveEnrolment)
            and not (isinstance(e, Announce) and e.kind == "enrolment")]


def kinds(effects: list) -> list[type]:
    return [type(e) for e in files_only(effects)]


def assigned(c: FileCore, mac: str = MAC, **kw) -> list:
    return files_only(c.config(mac, config(mac, **kw), None, False, NOW))


def test_a_new_config_is_saved_and_announced_once():
    c = core()
    effects = assigned(c)
    assert kinds(effects) == [Save, Announce, Announce]
    # the URLs first (the contract's published, only the notifier reads it), then files: what
    # the PBX and the operators may read, without one
    assert [e.kind for e in effects[1:]] == ["published", "files"]
    published, files = (json.loads(e.payload) for e in effects[1:])
    assert published["revision"] == files["revision"] == 1
    assert published["url"].startswith("http://files.example/p/")
    assert published["files"][0]["url"] == published["url"] + f"cfg{MAC}.xml"
    assert "url" not in files and "url" not in files["files"][0]
    assert files["files"][0]["size"] == len(config()["files"][0]["content"])
    assert MAC in c.catalog.devices
    # the same config again (a broker replay): nothing to store, nothing to say
    assert assigned(c) == []


def test_a_broker_that_already_holds_our_published_is_not_told_again():
    c = core()
    published, files = (e.payload for e in assigned(c)[1:])
    c.connected()
    c.published(MAC, published)
    c.files(MAC, files)
    assert assigned(c) == []
    c.published(MAC, None)  # cleared by someone: said again
    assert assigned(c) == [Announce(MAC, published)]
    c.files(MAC, None)
    assert assigned(c) == [Announce(MAC, files, "files")]


def test_a_bad_config_keeps_the_last_good_files_and_a_good_one_clears_the_error():
    c = core()
    assigned(c)
    good = c.catalog.devices[MAC]
    refused = assigned(c, revision=2, sha="0" * 64)
    assert kinds(refused) == [Refuse]
    assert refused[0].code == "checksum" and refused[0].field == "files[0].sha256"
    assert c.catalog.devices[MAC] is good
    assert MAC in c.errored
    undecodable = c.config(MAC, None, "not JSON", False, NOW)
    assert kinds(undecodable) == [Refuse] and undecodable[0].code == "payload"
    assert kinds(assigned(c, revision=2)) == [Save, Resolve, Announce, Announce]
    assert MAC not in c.errored


def test_an_empty_config_removes_the_device_and_its_published():
    c = core(errored={MAC})
    assigned(c)
    effects = c.config(MAC, None, None, True, NOW)
    assert effects == [SaveEnrolment(MAC, None), Announce(MAC, b"", "enrolment"), Remove(MAC),
                       Announce(MAC, b""), Announce(MAC, b"", "files")]
    assert MAC not in c.catalog.devices and MAC not in c.errored and not c.enrolments.records
    # nothing known of it: nothing to say
    assert c.config(OTHER, None, None, True, NOW) == []


def test_a_removed_device_s_url_stops_working_in_every_epoch():
    c = core()
    assigned(c, enrol=("a1", ""))
    assigned(c, enrol=("a2", ""), revision=2)  # a changed assignment: epoch 2, a new URL
    token = c.catalog.token(MAC)
    assert c.catalog.epochs[MAC] == 2 and c.catalog.by_token(token) is not None
    c.config(MAC, None, None, True, NOW)
    assert c.catalog.by_token(token) is None and MAC not in c.catalog.epochs
    assigned(c, enrol=("a3", ""), revision=3)  # assigned again: its new URL, not the old one
    assert c.catalog.by_token(token) is None and c.catalog.by_token(c.catalog.token(MAC)) is not None


def test_a_config_cleared_while_away_removes_the_device_after_the_replay():
    c = core()
    assigned(c)
    payload = assigned(c, mac=OTHER)[1].payload
    c.connected()
    c.published(OTHER, payload)  # its published came back, its config did not
    c.config(MAC, config(MAC), None, False, NOW)
    effects = files_only(c.replayed(lost_ours=False))
    assert effects == [Remove(OTHER, away=True), Announce(OTHER, b""), Announce(OTHER, b"", "files")]
    assert list(c.catalog.devices) == [MAC]


def test_a_broker_that_lost_config_and_published_keeps_the_device_served():
    c = core()
    assigned(c)
    c.connected()
    assert c.replayed(lost_ours=True) == [Missing((MAC,))]
    assert MAC in c.catalog.devices and c.configs_missing == 1


def test_a_published_put_back_by_the_keeper_counts_as_lost_not_cleared():
    c = core()
    assigned(c)
    c.connected()
    # its three topics go out again; OTHER is not ours to put back
    assert [e.kind for e in c.lost([MAC, OTHER])] == ["published", "files", "enrolment"]
    assert c.replayed(lost_ours=False) == [Missing((MAC,))]


def test_a_phone_that_fetches_the_same_file_again_is_provisioned():
    c = core()
    assigned(c)
    device = c.catalog.devices[MAC]
    served = next(iter(device.files.values()))
    first = files_only(c.served(device, served, 200, "127.0.0.2", "ua", AT, NOW))
    assert kinds(first) == [SaveFetch, Report]
    assert first[1].fetched.provisioned is False and first[1].fetched.server == "fs1"
    assert (first[1].fetched.auth, first[1].fetched.epoch) == ("bootstrap", 1)
    again = files_only(c.served(device, served, 304, "127.0.0.2", "ua", AT, NOW))
    assert again[0] == SaveFetch(MAC, served.name, served.sha256, served.sha256, True)
    assert again[-1].fetched.provisioned is True
    assert c.provisioned_devices() == 1
    # a third download moves nothing to save, but is still reported
    assert kinds(c.served(device, served, 304, "127.0.0.2", "ua", AT, NOW)) == [Report]


def test_downloads_served_by_another_instance_count_and_our_own_do_not():
    c = core()
    assigned(c)
    served = next(iter(c.catalog.devices[MAC].files.values()))
    event = {"file": served.name, "sha256": served.sha256, "status": 200, "server": "fs1"}
    assert c.fetched_elsewhere(MAC, event, NOW) == []
    assert c.fetched_elsewhere(MAC, {**event, "server": ""}, NOW) == []
    assert c.fetched_elsewhere(MAC, {**event, "status": 404, "server": "fs2"}, NOW) == []
    assert kinds(c.fetched_elsewhere(MAC, {**event, "server": "fs2"}, NOW)) == [SaveFetch]
    assert kinds(c.fetched_elsewhere(MAC, {**event, "status": 304, "server": "fs2"}, NOW)) == [SaveFetch]
    assert c.provisioned_devices() == 1


def test_announced_payloads_are_the_contracts_bytes_through_every_move():
    # published, files and enrolment are made without the dataclasses' to_json (and cached):
    # byte for byte what to_json gives, and never a stale one after the epoch or state moved
    from fileserver.core import enrolment_payload, iso
    from services.messages import Enrolment

    c = core()
    data = config(enrol=("a1", ""), password="pw")
    data["files"].append({**data["files"][0], "name": "common.cfg"})
    effects = c.config(MAC, data, None, False, NOW)
    c.discovered(MAC, "10.0.0.7", NOW + 1)
    effects += c.discovered(MAC, "10.0.0.8", NOW + 2)  # a conflict: addresses in the payload
    effects += c.config(MAC, config(enrol=("a1", "r1"), password="pw"), None, False, NOW + 3)
    device = c.catalog.devices[MAC]
    effects += c.served(device, device.main, 200, "10.0.0.7", "ua", AT, NOW + 4, auth="device")
    said = [e for e in effects if isinstance(e, Announce) and e.payload]
    assert {e.kind for e in said} == {"published", "files", "enrolment"}
    published = [e.payload for e in said if e.kind == "published"]
    # enrolling, and after the credentialed download not: each the catalog's to_json of its time
    assert [json.loads(p)["enrolling"] for p in published][-1] is False
    assert published[-1] == c.catalog.published(MAC, False).to_json()
    assert [e.payload for e in said if e.kind == "files"][-1] == c.catalog.files(MAC).to_json()
    assert len({json.loads(p)["url"] for p in published}) == 2  # the re-arm's new epoch, new URL
    states = []
    for e in [e for e in said if e.kind == "enrolment"]:
        got = json.loads(e.payload)
        states.append(got["state"])
        record = Enrolment.from_json(e.payload)
        assert e.payload == record.to_json()
    assert states == ["enrolling", "conflict", "enrolling", "provisioned"]
    record = c.enrolments.get(MAC)
    assert enrolment_payload(record) == Enrolment(
        state=record.state, epoch=record.epoch, since=iso(record.since), until=iso(record.until),
        bound=record.bound, candidate=record.candidate, addresses=[], reason=record.reason,
        mac=MAC, at=iso(record.at)).to_json()
    assert iso(NOW + 0.25) == "2027-01-15T08:00:00.250Z"


def test_only_an_enrolling_devices_discovery_is_looked_at():
    # the service parses a discovery only when the core watches its MAC: an enrolling device,
    # its window passed or not (the discovery is what finds it expired), never another
    c = core()
    assert not c.watches(MAC)  # no config yet: a first boot's discovery
    c.config(MAC, config(enrol=("a1", "")), None, False, NOW)
    assert c.watches(MAC)
    late = NOW + 3 * 86400 + 1
    assert c.watches(MAC)  # past its window, still enrolling until something looks
    assert [e.record.state for e in c.discovered(MAC, "10.0.0.7", late)
            if isinstance(e, SaveEnrolment)] == ["expired"]
    assert not c.watches(MAC)


def test_the_service_carries_out_every_kind_of_effect():
    # the glue dispatches on the effect's type: a kind the core gains must get a handler
    import typing

    from fileserver.core import Effect
    from fileserver.service import FileService

    assert set(FileService._handlers) == set(typing.get_args(Effect))


def test_enrolment_dates_are_datetimes_own_text():
    # iso() formats each second once and cuts the milliseconds itself: the text must still be
    # datetime's, at the edges of a millisecond and a second (rounding to the microsecond)
    import random
    from datetime import datetime, timezone

    from fileserver.core import iso

    edges = [NOW + f for f in (0.0, 0.0005, 0.0009995, 0.9995, 0.9999994, 0.9999995, 0.9999996)]
    rng = random.Random(15)
    for t in edges + [-1.5, 0.0] + [rng.uniform(0, 4e9) for _ in range(20000)]:
        assert iso(t) == datetime.fromtimestamp(t, timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"), t
