"""The notifier's parts without a network: when it sends (decide), what it remembers (state),
what it sends and where (build)."""

from __future__ import annotations

import pytest

from notifier import build, decide
from notifier.settings import SETTINGS, IN_DIALOG, OUT_OF_DIALOG, parse_dialog_policy
from services.settings import COMMON, CONTRACT, SettingError, resolve
from services.shard import Shard
from notifier.state import Provision, SentKey, Store, epoch
from services.messages import Discovered, Published, PublishedFile
from services.sip.message import parse, parse_name_addr, parse_via

MAC = "000b82f55284"
WINDOW = 600.0
T0 = 1_800_000_000.0


def discovered(call_id: str = "1848599395-5080-1@BJC.BGI.F.BHF", **changes) -> Discovered:
    values = dict(
        mac=MAC, vendor="Grandstream", model="GRP2614", firmware="1.0.0.31", ip="192.168.5.175",
        port=5080, contact="<sip:192.168.5.175:5080>", user_agent="Grandstream GRP2614 1.0.0.31",
        call_id=call_id, from_tag="1990948743", to_tag="ourtag77", seen_at="2027-01-15T08:00:00.000Z",
        cseq=20000, request_uri="sip:MAC%3A000B82F55284@224.0.1.75",
        from_uri="<sip:MAC%3A000B82F55284@224.0.1.75>;tag=1990948743",
        to_uri="<sip:MAC%3A000B82F55284@224.0.1.75>", interface="192.168.5.110", boot=1,
    )
    values.update(changes)
    return Discovered(**values)


def published(revision: int = 3, **enrolment) -> Published:
    url = "http://192.168.5.110:8080/p/tok/"
    return Published(url=url, files=[PublishedFile(f"cfg{MAC}.xml", url + f"cfg{MAC}.xml", "ab")],
                     revision=revision, mac=MAC, vendor="grandstream", **enrolment)


# --- decide ----------------------------------------------------------------------------------


def test_prestaged_phone_is_notified_once_per_call_id_and_revision():
    store = Store()
    store.put_published(MAC, published(3))
    device = store.put_device(MAC, discovered(), T0)
    plan = decide.after_discovery(MAC, device, store.published[MAC], None, store.sent, T0, WINDOW)
    assert (plan.kind, plan.revision, plan.url) == ("ua-profile", 3, published().url)
    store.mark_sent(plan.key, T0)
    # The phone's SUBSCRIBE retransmissions and retained replays: the same dialog, nothing more.
    for _ in range(5):
        device = store.put_device(MAC, discovered(), T0 + 1)
        assert decide.after_discovery(MAC, device, store.published[MAC], None, store.sent, T0 + 1, WINDOW) is None
    # A new boot is a new Call-ID.
    device = store.put_device(MAC, discovered("other-call"), T0 + 90)
    plan = decide.after_discovery(MAC, device, store.published[MAC], None, store.sent, T0 + 90, WINDOW)
    assert plan is not None and plan.key.call_id == "other-call"


def test_no_files_no_notify_until_they_are_published_within_the_window():
    store = Store()
    device = store.put_device(MAC, discovered(), T0)
    assert decide.after_discovery(MAC, device, None, None, store.sent, T0, WINDOW) is None
    p = published(1)
    plan = decide.after_publish(MAC, device, p, store.put_published(MAC, p), None, store.sent, T0 + 120, WINDOW)
    assert plan.kind == "ua-profile" and plan.revision == 1
    store.mark_sent(plan.key, T0 + 120)
    # A newer revision still in the window: one more.
    p2 = published(2)
    plan = decide.after_publish(MAC, device, p2, store.put_published(MAC, p2), None, store.sent, T0 + 130, WINDOW)
    assert plan.revision == 2


def test_published_after_the_window_waits_for_the_next_boot():
    store = Store()
    device = store.put_device(MAC, discovered(), T0)
    p = published(1)
    assert decide.after_publish(MAC, device, p, None, None, store.sent, T0 + WINDOW + 1, WINDOW) is None


def test_replay_of_an_old_discovery_does_not_notify():
    store = Store()
    store.put_published(MAC, published())
    device = store.put_device(MAC, discovered(), T0)
    assert decide.after_discovery(MAC, device, store.published[MAC], None, store.sent,
                                  T0 + WINDOW + 5, WINDOW) is None


def test_never_discovered_device_gets_nothing():
    assert decide.after_publish(MAC, None, published(), None, None, set(), T0, WINDOW) is None


def test_provisioned_phone_gets_one_check_sync_per_new_revision():
    store = Store()
    device = store.put_device(MAC, discovered(), T0)
    store.put_published(MAC, published(3))
    running = Provision(True, 3, T0 + 30)  # downloaded after its last boot
    # The same revision replayed: nothing.
    assert decide.after_publish(MAC, device, published(3), published(3), running, store.sent, T0 + 40, WINDOW) is None
    plan = decide.after_publish(MAC, device, published(4), published(3), running, store.sent, T0 + 50, WINDOW)
    assert (plan.kind, plan.revision) == ("check-sync", 4)
    store.mark_sent(plan.key, T0 + 50)
    assert decide.after_publish(MAC, device, published(4), published(4), running, store.sent, T0 + 60, WINDOW) is None
    # Long after its boot it still gets resyncs: it is a working phone.
    plan = decide.after_publish(MAC, device, published(5), published(4), running, store.sent, T0 + 10 * WINDOW, WINDOW)
    assert plan.kind == "check-sync"


def test_rebooted_phone_gets_ua_profile_and_replays_before_provisioning_are_quiet():
    store = Store()
    store.put_published(MAC, published(3))
    provision = Provision(True, 3, T0)
    booted = store.put_device(MAC, discovered("boot2"), T0 + 100)  # after the download: booting now
    plan = decide.after_discovery(MAC, booted, store.published[MAC], provision, store.sent, T0 + 100, WINDOW)
    assert plan.kind == "ua-profile"
    old = store.put_device(MAC, discovered("boot1"), T0 - 10)  # before it: not booting now
    assert decide.after_discovery(MAC, old, store.published[MAC], provision, store.sent, T0 + 1, WINDOW) is None


def test_no_ua_profile_while_not_enrolling_but_check_sync_goes_on():
    store = Store()
    device = store.put_device(MAC, discovered(), T0)
    closed = published(3, enrolling=False, epoch=1)
    assert decide.after_discovery(MAC, device, closed, None, store.sent, T0, WINDOW) is None
    assert decide.after_publish(MAC, device, closed, None, None, store.sent, T0, WINDOW) is None
    # A fileserver older than enrolment says nothing: the URL works, as before.
    plan = decide.after_discovery(MAC, device, published(3), None, store.sent, T0, WINDOW)
    assert plan.kind == "ua-profile" and plan.epoch is None
    # A running phone's new revision: its resync carries no URL, enrolment has no say.
    running = Provision(True, 3, T0 + 30)
    plan = decide.after_publish(MAC, device, published(4, enrolling=False, epoch=1), closed,
                                running, store.sent, T0 + 40, WINDOW)
    assert plan.kind == "check-sync"


def test_one_address_per_enrolment_epoch():
    store = Store()
    first = store.put_device(MAC, discovered("a"), T0)
    p = published(3, enrolling=True, epoch=2)
    plan = decide.after_discovery(MAC, first, p, None, store.sent, T0, WINDOW, store.addressed.get(MAC))
    assert plan.epoch == 2
    store.mark_sent(plan.key, T0)
    assert store.address_epoch(MAC, 2, first.discovered.ip, T0)
    assert not store.address_epoch(MAC, 2, "10.9.9.9", T0)  # the first one stays
    # The same address, a new boot (the phone rebooted before downloading): sent again.
    again = store.put_device(MAC, discovered("b", port=5099), T0 + 5)
    plan = decide.after_discovery(MAC, again, p, None, store.sent, T0 + 5, WINDOW, store.addressed[MAC])
    assert isinstance(plan, decide.Plan) and plan.key.call_id == "b"
    # Another address in the same epoch: held, naming both; and a newer revision of it too.
    other = store.put_device(MAC, discovered("c", ip="192.168.5.66"), T0 + 6)
    held = decide.after_discovery(MAC, other, p, None, store.sent, T0 + 6, WINDOW, store.addressed[MAC])
    assert held == decide.Held(MAC, 2, "192.168.5.175", "192.168.5.66")
    assert isinstance(decide.after_publish(MAC, other, published(4, enrolling=True, epoch=2), p, None,
                                           store.sent, T0 + 7, WINDOW, store.addressed[MAC]), decide.Held)
    # A new epoch (re-armed): not to the discovery made before it, which may be the very host
    # the re-arm is meant to forget; then whoever asks first in it.
    p3 = published(5, enrolling=True, epoch=3)
    assert decide.after_publish(MAC, other, p3, p, None, store.sent, T0 + 8, WINDOW,
                                store.addressed[MAC]) is None
    other = store.put_device(MAC, discovered("d", ip="192.168.5.66"), T0 + 9)
    plan = decide.after_discovery(MAC, other, p3, None, store.sent, T0 + 9, WINDOW, store.addressed[MAC])
    assert isinstance(plan, decide.Plan) and plan.epoch == 3
    assert store.address_epoch(MAC, 3, "192.168.5.66", T0 + 9)
    # No epoch from the fileserver (older): no address rule.
    plan = decide.after_discovery(MAC, first, published(6), None, store.sent, T0 + 9, WINDOW,
                                  store.addressed[MAC])
    assert isinstance(plan, decide.Plan)


# --- state -----------------------------------------------------------------------------------


def test_epoch_addresses_survive_a_restart_and_an_older_database_gets_the_table(tmp_path):
    path = tmp_path / "notifier.db"
    old = Store(path)
    old.put_published(MAC, published(7))
    old.close()
    # A notifier.db of a notifier before enrolment: no ``addressed`` table.
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE addressed")
    conn.commit()
    conn.close()

    store = Store(path)
    assert store.addressed == {} and store.published[MAC].revision == 7
    assert store.address_epoch(MAC, 4, "10.0.0.5", T0)
    store.close()
    again = Store(path)
    assert again.addressed[MAC].address == "10.0.0.5" and again.addressed[MAC].epoch == 4
    # A removed device may come back with its epochs counted from 1 again.
    again.drop_published(MAC)
    again.close()
    assert Store(path).addressed == {}



def test_state_survives_a_restart(tmp_path):
    path = tmp_path / "notifier.db"
    store = Store(path)
    store.put_device(MAC, discovered(), T0)
    assert store.next_cseq(MAC) == 1
    assert store.next_cseq(MAC) == 2
    store.put_published(MAC, published(7))
    store.put_provision(MAC, Provision(True, 7, T0 + 5))
    key = SentKey(MAC, "c", 7, "ua-profile")
    assert store.mark_sent(key, T0)
    assert not store.mark_sent(key, T0)
    store.close()

    again = Store(path)
    assert again.db.journal_mode == "wal"
    assert again.devices[MAC].discovered == discovered()
    assert again.devices[MAC].cseq == 2
    assert again.published[MAC].revision == 7
    assert again.provisions[MAC] == Provision(True, 7, T0 + 5)
    assert not again.mark_sent(key, T0)
    # A new dialog starts its CSeq again; the same dialog keeps counting.
    again.put_device(MAC, discovered(), T0 + 1)
    assert again.next_cseq(MAC) == 3
    again.put_device(MAC, discovered("new"), T0 + 2)
    assert again.next_cseq(MAC) == 1
    again.close()


def test_epoch_reads_contract_times_and_falls_back():
    assert epoch("2027-01-15T08:00:00.000Z", 0) == pytest.approx(1800000000.0)
    assert epoch("yesterday", 42.0) == 42.0


# --- settings --------------------------------------------------------------------------------


def test_dialog_policy_with_vendor_overrides():
    policy = parse_dialog_policy("in-dialog, Grandstream=out-of-dialog")
    assert policy.mode_for("grandstream") == OUT_OF_DIALOG
    assert policy.mode_for("Yealink") == IN_DIALOG
    assert parse_dialog_policy("out-of-dialog").mode_for("snom") == OUT_OF_DIALOG
    assert str(policy) == "in-dialog,grandstream=out-of-dialog"
    for bad in ["", "sideways", "snom=maybe", "=in-dialog"]:
        with pytest.raises(ValueError):
            parse_dialog_policy(bad)


def test_settings_that_only_work_together_are_one_line_errors():
    from notifier.main import check_settings

    def settings(**values):
        return resolve(COMMON + CONTRACT + SETTINGS, values, environ={})

    with pytest.raises(SettingError, match=r"PNP_SIP_T2 .*'0.2'.* must not be below PNP_SIP_T1"):
        check_settings(settings(sip_t1="0.5", sip_t2="0.2"))
    with pytest.raises(SettingError, match=r"PNP_NOTIFY_PORT .*'5060'.*listener's port"):
        check_settings(settings(notify_port="5060"))
    check_settings(settings(sip_t1="0.5", sip_t2="0.5", notify_port="5070"))


def test_shards_split_every_mac_exactly_once_and_bad_values_are_one_line_errors():
    macs = [f"000b82{i:06x}" for i in range(3000)]
    for n in (1, 2, 3, 7):
        owners = [[k for k in range(1, n + 1) if Shard(k, n).owns(mac)] for mac in macs]
        assert all(len(o) == 1 for o in owners), n
        counts = [sum(o == [k] for o in owners) for k in range(1, n + 1)]
        assert min(counts) > len(macs) / n * 0.8, counts  # a spread, not one busy instance
    # The same line in every process: a stable CRC, whatever the case of the MAC.
    assert Shard(1, 2).owns("000b82f55284") is Shard(1, 2).owns("000B82F55284") is True

    def shard(raw: str) -> Shard:
        return resolve(COMMON + CONTRACT + SETTINGS, {"notifier_shard": raw}, environ={}).notifier_shard

    assert shard("2/3") == Shard(2, 3) and str(shard(" 1 / 1 ")) == "1/1"
    assert resolve(COMMON + CONTRACT + SETTINGS, {}, environ={}).notifier_shard == Shard(1, 1)
    for bad in ["0/2", "3/2", "1/0", "1/1025", "2", "1/2/3", "a/b", "-1/2", "1/2x"]:
        with pytest.raises(SettingError) as error:
            shard(bad)
        assert "PNP_NOTIFIER_SHARD" in str(error.value) and "\n" not in str(error.value)


# --- build -----------------------------------------------------------------------------------

LOCAL = build.Local("192.168.5.110", 40001)


def test_in_dialog_notify_mirrors_the_subscribe():
    d = discovered()
    request = build.ua_profile(d, "http://192.168.5.110:8080/p/tok/", LOCAL, IN_DIALOG, cseq=1)
    wire = parse(request.to_bytes())  # what the phone's parser sees
    assert wire.method == "NOTIFY"
    assert wire.uri == "sip:192.168.5.175:5080"
    h = wire.headers
    assert h.get("Call-ID") == d.call_id
    to, frm = parse_name_addr(h.get("To")), parse_name_addr(h.get("From"))
    assert (to.uri, to.tag) == ("sip:MAC%3A000B82F55284@224.0.1.75", "1990948743")
    assert (frm.uri, frm.tag) == ("sip:MAC%3A000B82F55284@224.0.1.75", "ourtag77")
    assert wire.cseq == (1, "NOTIFY")
    via = parse_via(h.get("Via"))
    assert (via.host, via.port) == ("192.168.5.110", 40001)
    assert via.branch.startswith("z9hG4bK") and len(via.branch) > 7
    assert h.get("Event") == "ua-profile"
    assert h.get("Subscription-State") == "terminated;reason=timeout"
    assert h.get("Content-Type") == "application/url"
    assert wire.body == b"http://192.168.5.110:8080/p/tok/"
    assert h.get("Content-Length") == str(len(wire.body))


def test_in_dialog_without_tagged_from_uri_uses_the_tags():
    d = discovered(from_uri="", to_uri="")
    wire = parse(build.ua_profile(d, "http://x/", LOCAL, IN_DIALOG, cseq=4).to_bytes())
    assert parse_name_addr(wire.headers.get("To")).tag == "1990948743"
    assert parse_name_addr(wire.headers.get("From")).tag == "ourtag77"
    with pytest.raises(build.BuildError):
        build.ua_profile(discovered(to_tag=""), "http://x/", LOCAL, IN_DIALOG, cseq=1)


def test_in_dialog_for_a_phone_whose_from_has_no_tag():
    # Fanvil's PnP SUBSCRIBE: From without a tag. The dialog's remote tag is null, not an error.
    d = discovered(from_tag="", from_uri="<sip:MAC=0c383e000001@224.0.1.75>")
    wire = parse(build.ua_profile(d, "http://x/0c383e000001.cfg", LOCAL, IN_DIALOG, cseq=1).to_bytes())
    to = parse_name_addr(wire.headers.get("To"))
    assert (to.uri, to.tag) == ("sip:MAC=0c383e000001@224.0.1.75", None)
    assert parse_name_addr(wire.headers.get("From")).tag == "ourtag77"
    assert wire.headers.get("Call-ID") == d.call_id


def test_out_of_dialog_notify_is_the_guides_capture():
    d = discovered()
    wire = parse(build.ua_profile(d, "https://192.168.5.190:8089/zccgi/", LOCAL, OUT_OF_DIALOG, cseq=9).to_bytes())
    h = wire.headers
    assert h.get("Call-ID") != d.call_id
    assert h.get("To") == "<sip:192.168.5.175:5080>"  # untagged
    frm = parse_name_addr(h.get("From"))
    assert frm.uri == "sip:192.168.5.110:40001" and frm.tag
    assert wire.cseq == (1, "NOTIFY")
    assert wire.body == b"https://192.168.5.190:8089/zccgi/"


@pytest.mark.parametrize("reboot, event", [(False, "check-sync;reboot=false"), (True, "check-sync;reboot=true")])
def test_check_sync(reboot, event):
    wire = parse(build.check_sync(discovered(), LOCAL, reboot).to_bytes())
    assert wire.uri == "sip:192.168.5.175:5080"
    assert wire.headers.get("Event") == event
    assert wire.body == b""


def test_destination_contact_or_source():
    # The phone speaks for itself: its Contact port, even when it sent from another port.
    assert build.destination(discovered(port=33333)) == ("192.168.5.175", 5080)
    assert build.destination(discovered(contact="<sip:192.168.5.175>")) == ("192.168.5.175", 5060)
    # Behind a NAT the Contact's private address is unreachable: the observed source it is.
    assert build.destination(discovered(ip="203.0.113.9", port=61000)) == ("203.0.113.9", 61000)
    assert build.destination(discovered(contact="<sip:phone.local:5080>")) == ("192.168.5.175", 5080)
    # No usable source: the Contact alone.
    assert build.destination(discovered(ip="", port=0)) == ("192.168.5.175", 5080)
    with pytest.raises(build.BuildError):
        build.destination(discovered(ip="", port=0, contact="garbage"))


@pytest.mark.parametrize("changes", [
    {"port": 33333}, {"contact": "<sip:192.168.5.175>"}, {"ip": "203.0.113.9", "port": 61000},
    {"contact": "<sip:phone.local:5080>"}, {"ip": "", "port": 0}, {"ip": "192.168.05.175"},
    {"contact": "<sip:192.168.5.256:5080>", "ip": "", "port": 0},
])
def test_target_is_the_contact_and_the_destination(changes):
    # What a NOTIFY is sent with: the Request-URI its phone wrote, and where the datagram goes.
    d = discovered(**changes)
    try:
        expected = build.destination(d)
    except build.BuildError:
        with pytest.raises(build.BuildError):
            build.target(d)
        return
    assert build.target(d) == build.Target(build.contact_uri(d), expected)


def test_no_notify_is_addressed_to_an_unusable_contact():
    with pytest.raises(build.BuildError, match="unusable Contact"):
        build.target(discovered(contact="garbage"))  # the source alone names no Request-URI


def test_burst_log_lines_one_by_one_then_a_count():
    from twisted.internet import task

    from services.burstlog import BurstLog

    clock, lines, summaries = task.Clock(), [], []
    burst = BurstLog(clock, summaries.append, per_second=3, summary_after=5.0)
    for i in range(10):
        burst(lambda i=i: lines.append(i))
    assert lines == [0, 1, 2] and summaries == []
    clock.advance(1.0)
    burst(lambda: lines.append("next second"))  # a new second logs again
    assert lines[-1] == "next second"
    clock.advance(4.0)
    assert summaries == [7]  # the seven that were only counted, in one line
    clock.advance(10.0)
    assert summaries == [7]
    burst(lambda: lines.append("quiet"))
    burst.flush()  # on stop: nothing pending, no line
    assert summaries == [7] and lines[-1] == "quiet"


def test_store_batches_writes_until_the_commit_and_a_late_commit_after_close_is_harmless(tmp_path):
    pending: list = []
    store = Store(tmp_path / "n.db", later=pending.append)
    key = SentKey("000b82f55284", "c1", 1, "ua-profile")
    assert store.mark_sent(key, 1.0)
    assert store.mark_sent(SentKey("000b82f55285", "c1", 1, "ua-profile"), 1.0)
    assert len(pending) == 1  # one commit asked for the whole batch
    reader = Store(tmp_path / "n.db")
    assert key not in reader.sent  # not committed yet
    reader.close()
    pending.pop()()
    reader = Store(tmp_path / "n.db")
    assert key in reader.sent and len(reader.sent) == 2
    reader.close()
    assert store.mark_sent(SentKey("000b82f55286", "c2", 1, "ua-profile"), 2.0)
    store.close()  # commits what is pending
    pending.pop()()  # the scheduled commit, after close: nothing to do, no error
    reader = Store(tmp_path / "n.db")
    assert len(reader.sent) == 3
    reader.close()


def test_store_runs_queued_writes_in_order_at_the_commit(tmp_path):
    pending: list = []
    store = Store(tmp_path / "n.db", later=pending.append)
    store.put_device(MAC, discovered(), T0)
    assert store.next_cseq(MAC) == 1 and store.next_cseq(MAC) == 2
    store.put_provision(MAC, Provision(True, 4, T0 + 1))
    assert len(pending) == 1
    assert store.db.execute("SELECT count(*) FROM devices").fetchone()[0] == 0  # queued, not run
    pending.pop()()
    store.close()
    again = Store(tmp_path / "n.db")
    assert again.devices[MAC].cseq == 2  # the UPDATEs ran after the INSERT they follow
    assert again.provisions[MAC] == Provision(True, 4, T0 + 1)
    again.close()


@pytest.mark.parametrize("raw, says", [
    (b'{"at":"x","provisioned":true,"revision":2}', True),
    (b'{"provisioned": true}', True),
    (b'{"provisioned" :\n true}', True),
    (b'{"at":"x","provisioned":false,"revision":2}', False),
    (b'{"user_agent":"provisioned true"}', False),
    (b"", False),
])
def test_fetched_byte_check_finds_provisioned_true_however_spaced(raw, says):
    from notifier.service import _PROVISIONED

    assert (_PROVISIONED.search(raw) is not None) is says


# --- credentials for a challenged NOTIFY -----------------------------------------------------

def test_credentials_survive_a_restart_and_only_the_newest_are_kept(tmp_path):
    from notifier.state import CREDENTIALS_KEPT
    from services.messages import ResyncCredentials

    store = Store(tmp_path / "n.db")
    for revision in range(1, CREDENTIALS_KEPT + 3):
        store.put_credentials(MAC, ResyncCredentials(revision, "1001", f"pw{revision}", MAC))
    store.close()
    again = Store(tmp_path / "n.db")
    kept = again.credentials[MAC]
    assert sorted(kept) == list(range(3, CREDENTIALS_KEPT + 3))
    # the revision the phone runs; else the newest older one; else the newest of all
    assert again.credentials_for(MAC, 4).password == "pw4"
    assert again.credentials_for(MAC, 99).password == f"pw{CREDENTIALS_KEPT + 2}"
    assert again.credentials_for(MAC, 1).password == f"pw{CREDENTIALS_KEPT + 2}"
    assert again.credentials_for(MAC, None).password == f"pw{CREDENTIALS_KEPT + 2}"
    assert again.credentials_for("000b82000000", 4) is None
    again.drop_credentials(MAC)
    again.close()
    assert Store(tmp_path / "n.db").credentials == {}
