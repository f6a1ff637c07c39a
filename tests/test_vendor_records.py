"""Vendor fidelity: each family's full assignment rendered to golden files in four time zones,
every emitted setting checked against the family's record (documented key, allowed value), the
time zones per vendor (with and without daylight saving, north and south), languages, and the
simulated phones reading the files the way their firmware does.

Set PNP_UPDATE_GOLDEN=1 to rewrite tests/golden/vendors/ after a deliberate change."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from generator import schema
from generator.render import Renderer
from generator.vendors import FAMILIES, RECORDS, RenderProblem, fanvil, grandstream, snom, tz, yealink
from tools.simulate.vendors import VENDORS, FileRefused, check_file

GOLDEN = Path(__file__).parent / "golden" / "vendors"
ROOT = Path(__file__).parent.parent
MAC = "000b82f55284"
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]

ACCOUNTS = [
    {"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret & <p> \"q\"",
     "display_name": "Bob & <Alice> \"B\"", "label": "Desk & <1> \"x\"", "transport": "tls", "port": 5071,
     "auth_id": "auth1001", "outbound_proxy": "sbc.example.com", "enabled": True},
    {"sip_server": "pbx2.example.com", "user_id": "2001", "password": "pw2", "display_name": "Second",
     "transport": "udp"},
]

# Every key type each family can show, names with & < > " included.
KEYS = {
    "grandstream": [{"type": "line", "account": 1, "label": "Line & <1>"}, {"type": "blf", "value": "1002",
                    "label": "Carol & \"C\""}, {"type": "speed_dial", "value": "+4930123", "label": "Office",
                    "account": 2}, {"type": "park", "value": "700", "label": "Park <1>"},
                    {"type": "intercom", "value": "1003"}, {"type": "dtmf", "value": "*3"},
                    {"type": "voicemail", "value": "*97"}, {"type": "transfer", "value": "1004"},
                    {"type": "none"}],
    "yealink": [{"type": "line", "account": 1, "label": "Line & <1>"}, {"type": "blf", "value": "1002",
                "label": "Carol & \"C\""}, {"type": "speed_dial", "value": "+4930123", "label": "Office",
                "account": 2}, {"type": "park", "value": "700"}, {"type": "dtmf", "value": "*3"},
                {"type": "none"}],
    "snom": [{"type": "line", "account": 1, "label": "Line & <1>"}, {"type": "blf", "value": "1002",
             "label": "Carol & \"C\""}, {"type": "speed_dial", "value": "+4930123", "label": "Office",
             "account": 2}, {"type": "transfer"}, {"type": "none"}],
    "fanvil": [{"type": "line", "account": 1, "label": "Line & <1>"}, {"type": "blf", "value": "1002",
               "label": "Carol & \"C\""}, {"type": "speed_dial", "value": "+4930123", "label": "Office",
               "account": 2}, {"type": "park", "value": "700"}, {"type": "none"}],
}
FIRMWARE = {"grandstream": "fw.example.com/grp", "yealink": "https://fw.example.com/T46S-66.86.0.15.rom",
            "snom": "https://fw.example.com/snomD785-firmware.xml", "fanvil": "https://fw.example.com/fanvil"}
MODEL = {"grandstream": "GRP2616", "yealink": "T46S", "snom": "D785", "fanvil": "X6U"}
RAW = {"grandstream": {"P8": 0}, "yealink": {"features.dnd.enable": 0}, "snom": {"dim_timer": 20},
       "fanvil": {"phone.KeyLockTimeout": 0}}


def full(vendor: str, zone: str = "Europe/Berlin") -> dict:
    return {
        "accounts": copy.deepcopy(ACCOUNTS),
        "codecs": ["g722", "pcma", "pcmu"],
        "keys": copy.deepcopy(KEYS[vendor]),
        "provisioning": {"config_server": "https://prov.example.com/cfg", "firmware_server": FIRMWARE[vendor],
                         "check_interval": 1440},
        "time_zone": zone,
        "ntp_server": "ntp.example.com",
        "admin_password": "Adm1n",
        "language": "de",
        "vendor_settings": {vendor: RAW[vendor]},
    }


def render(vendor: str, model: str, assignment: dict):
    return Renderer().render(MAC, vendor, model, "1.0.0.1", assignment)


def slug(zone: str) -> str:
    return zone.replace("/", "_")


CASES = [(v, z) for v in MODEL for z in ZONES if not (v == "fanvil" and z == "Asia/Kolkata")]


@pytest.mark.parametrize("vendor,zone", CASES)
def test_full_assignment_golden_and_every_setting_documented(vendor: str, zone: str) -> None:
    assignment = full(vendor, zone)
    assert schema.first_problem(assignment) is None
    rendered = render(vendor, MODEL[vendor], assignment)
    record = RECORDS[vendor]
    raw = set(RAW[vendor]) | {f"{k.split('.')[0]}/{k.split('.')[1]}" for k in RAW[vendor] if "." in k}
    for f in rendered.files:
        golden = GOLDEN / f"{vendor}-{MODEL[vendor]}-{slug(zone)}-{f.name.replace(MAC, 'MAC')}"
        if os.environ.get("PNP_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(f.body)
        assert f.body == golden.read_bytes(), f"{f.name} differs from {golden.name}"
        # Parsed the way the phone parses it: every key documented, every value allowed.
        pairs = check_file(VENDORS[vendor], MODEL[vendor], MAC, f.name, f.body, frozenset(raw))
        assert pairs
        problems = record.problems([(k, v) for k, v in pairs if k not in raw])
        assert problems == [], problems


def test_fanvil_cannot_express_kolkata_and_says_so() -> None:
    with pytest.raises(RenderProblem) as caught:
        render("fanvil", "X6U", full("fanvil", "Asia/Kolkata"))
    assert caught.value.field == "time_zone" and "'Asia/Kolkata'" in caught.value.message
    assert "+5:30" in caught.value.message


# --- time zones, one per vendor and zone (no DST: Kolkata; southern: Sydney) ---

@pytest.mark.parametrize("zone,p64,p246", [
    ("Europe/Berlin", "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00", None),
    ("America/New_York", "customize", "EST5EDT,M3.2.0,M11.1.0"),  # the list's EST5EDT has no rules
    ("Asia/Kolkata", "TZT-5:30", None),
    ("Australia/Sydney", "EST-10EDT-11,M10.1.0/02:00:00,M4.1.0/03:00:00", None),
    ("Europe/London", "GMT+0BST-1,M3.5.0/01:00:00,M10.5.0/02:00:00", None),
    ("America/Sao_Paulo", "TZK+3", None),  # no DST any more: the list's UTC-3 entry, not BRST+3BRDT+2
    ("America/Caracas", "customize", "<-04>4"),  # the list's Caracas entry is -4:30, out of date
])
def test_grandstream_time_zone(zone: str, p64: str, p246: str | None) -> None:
    assert grandstream.time_zone(zone) == (p64, p246)


@pytest.mark.parametrize("zone,expected", [
    ("Europe/Berlin", {"local_time.time_zone": "+1", "local_time.summer_time": "1", "local_time.dst_time_type": "1",
                       "local_time.start_time": "3/5/1/2", "local_time.end_time": "10/5/1/3",
                       "local_time.offset_time": "60"}),
    ("America/New_York", {"local_time.time_zone": "-5", "local_time.summer_time": "1",
                          "local_time.dst_time_type": "1", "local_time.start_time": "3/2/1/2",
                          "local_time.end_time": "11/1/1/2", "local_time.offset_time": "60"}),
    ("Asia/Kolkata", {"local_time.time_zone": "+5:30", "local_time.summer_time": "0"}),
    ("Australia/Sydney", {"local_time.time_zone": "+10", "local_time.summer_time": "1",
                          "local_time.dst_time_type": "1", "local_time.start_time": "10/1/1/2",
                          "local_time.end_time": "4/1/1/3", "local_time.offset_time": "60"}),
])
def test_yealink_time_zone(zone: str, expected: dict) -> None:
    assert dict(yealink.time_zone(zone)) == expected


@pytest.mark.parametrize("zone,offset,dst", [
    ("Europe/Berlin", "+3600", "3600 03.05.07 02:00:00 10.05.07 03:00:00"),
    ("America/New_York", "-18000", "3600 03.02.07 02:00:00 11.01.07 02:00:00"),
    ("Asia/Kolkata", "+19800", ""),
    ("Australia/Sydney", "+36000", "3600 10.01.07 02:00:00 04.01.07 03:00:00"),
])
def test_snom_time_zone(zone: str, offset: str, dst: str) -> None:
    assert snom.time_zone(zone) == [("timezone", ""), ("utc_offset", offset), ("dst", dst)]


@pytest.mark.parametrize("zone,expected", [
    ("Europe/Berlin", {"TimeZone": "4", "TimeZoneName": "UTC+1", "EnableDST": "2", "DSTFixedType": "2",
                       "DSTMinOffset": "60", "DSTStartMon": "3", "DSTStartWeek": "-1", "DSTStartWday": "0",
                       "DSTStartHour": "2", "DSTEndMon": "10", "DSTEndWeek": "-1", "DSTEndWday": "0",
                       "DSTEndHour": "3"}),
    ("America/New_York", {"TimeZone": "-20", "TimeZoneName": "UTC-05", "EnableDST": "2", "DSTFixedType": "2",
                          "DSTMinOffset": "60", "DSTStartMon": "3", "DSTStartWeek": "2", "DSTStartWday": "0",
                          "DSTStartHour": "2", "DSTEndMon": "11", "DSTEndWeek": "1", "DSTEndWday": "0",
                          "DSTEndHour": "2"}),
    ("Australia/Sydney", {"TimeZone": "40", "TimeZoneName": "UTC+10", "EnableDST": "2", "DSTFixedType": "2",
                          "DSTMinOffset": "60", "DSTStartMon": "10", "DSTStartWeek": "1", "DSTStartWday": "0",
                          "DSTStartHour": "2", "DSTEndMon": "4", "DSTEndWeek": "1", "DSTEndWday": "0",
                          "DSTEndHour": "3"}),
    ("UTC", {"TimeZone": "0", "TimeZoneName": "UCT", "EnableDST": "0"}),
])
def test_fanvil_time_zone(zone: str, expected: dict) -> None:
    assert dict(fanvil.time_zone(zone)) == expected


def test_a_zone_no_vendor_knows_or_cannot_write_is_an_error_naming_it() -> None:
    for vendor, fn in (("grandstream", grandstream.time_zone), ("yealink", yealink.time_zone),
                       ("snom", snom.time_zone), ("fanvil", fanvil.time_zone)):
        with pytest.raises(RenderProblem) as caught:
            fn("Mars/Olympus_Mons")
        assert "'Mars/Olympus_Mons'" in caught.value.message, vendor
    # Lord Howe moves its clocks by 30 minutes at 02:00: Yealink/snom can, Fanvil cannot (+10:30)
    with pytest.raises(RenderProblem) as caught:
        fanvil.time_zone("Australia/Lord_Howe")
    assert "Australia/Lord_Howe" in caught.value.message
    # Chatham's switch is at 02:45: not a whole hour, which Yealink's rule format needs
    with pytest.raises(RenderProblem) as caught:
        yealink.time_zone("Pacific/Chatham")
    assert "Pacific/Chatham" in caught.value.message and "whole hour" in caught.value.message


def test_grandstream_time_zone_list_entries_mean_what_their_labels_say() -> None:
    # Only entries whose POSIX meaning matches the list's own GMT label are ever chosen.
    chosen = {value for value, _ in grandstream._LISTED}
    assert "UTC+3" not in chosen  # labelled GMT-02:00 (Argentina), but POSIX UTC+3 is UTC-3
    assert "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00" in chosen
    assert len(tz.zone("Europe/Berlin").posix) <= grandstream.P246_MAX


# --- languages ---

@pytest.mark.parametrize("tag,values", [
    ("de", {"grandstream": "de", "yealink": "German", "snom": "Deutsch", "fanvil": "de"}),
    ("fr-CA", {"grandstream": "fr", "yealink": "French", "snom": "Français", "fanvil": "fr"}),
    ("zh-TW", {"grandstream": "zh-tw", "fanvil": "tc"}),
])
def test_language_per_vendor(tag: str, values: dict) -> None:
    from generator.vendors.record import language

    for vendor, value in values.items():
        assert language(RECORDS[vendor], tag) == value


def test_unknown_language_is_an_error_naming_it_and_the_choices() -> None:
    with pytest.raises(RenderProblem) as caught:
        render("yealink", "T46S", {**full("yealink"), "language": "tlh"})
    assert caught.value.field == "language" and "'tlh'" in caught.value.message and "de, en" in caught.value.message
    assert schema.first_problem({"accounts": ACCOUNTS, "language": "de_DE"}).field == "language"


# --- keys removed from an assignment are reset ---

def test_removed_keys_are_reset_on_every_vendor() -> None:
    def pairs(vendor: str, model: str, keys: list) -> list[tuple[str, str]]:
        out = []
        for f in render(vendor, model, {"accounts": ACCOUNTS, "keys": keys}).files:
            out += check_file(VENDORS[vendor], model, MAC, f.name, f.body)
        return out

    keys = [{"type": "blf", "value": str(2000 + i)} for i in range(10)]
    # GRP2614: VPK 5-16 dynamic, all written even when only 2 keys are left
    before, after = dict(pairs("grandstream", "GRP2614", keys)), dict(pairs("grandstream", "GRP2614", keys[:2]))
    assert before["P23800"] == "1" and after["P23800"] == "none" and after["P23836"] == "none"
    assert after["P1369"] == "-1"  # VPK 4 (fixed; no account 4): none
    assert set(before) == set(after)  # the same P-values written: nothing left behind
    y_before, y_after = pairs("yealink", "T46S", keys), pairs("yealink", "T46S", keys[:2])
    assert dict(y_after)["linekey.10.type"] == "0" and dict(y_after)["linekey.10.value"] == "%NULL%"
    assert [k for k, _ in y_before] == [k for k, _ in y_after]
    s_after = [v for k, v in pairs("snom", "D785", keys[:2]) if k == "fkey"]
    assert len(s_after) == 77 and s_after[2:] == ["none"] * 75
    f_after = [v for k, v in pairs("fanvil", "X4U", keys[:2]) if k.endswith("Fkey/Type")]
    assert len(f_after) == 33 and f_after[2:] == ["0"] * 31


# --- Grandstream specifics from the issue ---

def test_grandstream_mpks_are_the_phone_mpks_not_the_expansion_module() -> None:
    keys = [{"type": "blf", "value": str(2000 + i)} for i in range(48)]
    p = dict(check_file(VENDORS["grandstream"], "GRP2616", MAC, f"cfg{MAC}.xml",
                        render("grandstream", "GRP2616", {"accounts": ACCOUNTS, "keys": keys}).files[0].body))
    assert (p["P23868"], p["P23871"]) == ("1", "2023")  # VPK 24, the GRP2616's last
    assert (p["P323"], p["P301"], p["P303"]) == ("1", "0", "2024")  # MPK 1
    assert (p["P353"], p["P356"]) == ("1", "2031")  # MPK 8
    assert (p["P357"], p["P360"]) == ("1", "2032")  # MPK 9
    assert (p["P1460"], p["P1463"]) == ("1", "2047")  # MPK 24
    assert not any(k.startswith("P230") and len(k) == 6 for k in p)  # no EXT MPK P23000...


def test_grandstream_firmware_protocol_dhcp_and_resync_settings() -> None:
    p = dict(check_file(VENDORS["grandstream"], "GRP2612", MAC, f"cfg{MAC}.xml",
                        render("grandstream", "GRP2612", full("grandstream")).files[0].body, frozenset({"P8"})))
    assert (p["P212"], p["P6767"], p["P145"], p["P143"]) == ("2", "2", "0", "0")
    # no factory reset by NOTIFY (Event: reset) for anyone on the LAN; check-sync needs none
    assert (p["P26015"], p["P26115"], p["P4428"]) == ("0", "0", "0")
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GRP2612", {**full("grandstream"), "admin_password": "adm<in>"})
    assert caught.value.field == "admin_password"


@pytest.mark.parametrize("interval,ok", [(0, True), (59, False), (60, True), (86400, True), (86401, False)])
def test_check_interval_range(interval: int, ok: bool) -> None:
    doc = {"accounts": ACCOUNTS, "provisioning": {"check_interval": interval}}
    problem = schema.first_problem(doc)
    assert (problem is None) == ok, problem
    if not ok:
        assert problem.field == "provisioning.check_interval" and "60 to 86400" in problem.message


def test_yealink_common_file_per_model_and_rom_firmware() -> None:
    names = {m: render("yealink", m, {"accounts": ACCOUNTS}).files[0].name for m in ("T41S", "T42S", "T46S", "T48S")}
    assert names == {"T41S": "y000000000068.cfg", "T42S": "y000000000067.cfg", "T46S": "y000000000066.cfg",
                     "T48S": "y000000000065.cfg"}
    with pytest.raises(RenderProblem) as caught:
        render("yealink", "T46S", {**full("yealink"), "provisioning": {"firmware_server": "fw.example.com/yealink"}})
    assert caught.value.field == "provisioning.firmware_server" and ".rom" in caught.value.message


def test_snom_setting_server_is_the_file_url_and_firmware_status_a_settings_file() -> None:
    p = dict(check_file(VENDORS["snom"], "D785", MAC, f"{MAC}.xml", render("snom", "D785", full("snom")).files[0].body))
    assert p["setting_server"] == f"https://prov.example.com/cfg/{MAC}.xml"
    assert p["firmware_status"] == FIRMWARE["snom"]
    assert p["codec_priority_list"] == "g722,pcma,pcmu,telephone-event"
    with pytest.raises(RenderProblem):
        render("snom", "D785", {**full("snom"), "provisioning": {"firmware_server": "https://fw.example.com/snom/"}})


def test_fanvil_tls_codecs_and_line_keys() -> None:
    p = check_file(VENDORS["fanvil"], "X4U", MAC, f"{MAC}.cfg", render("fanvil", "X4U", full("fanvil")).files[0].body)
    d = {}
    for k, v in p:
        d.setdefault(k, []).append(v)
    assert d["sip/line/Transport"][:2] == ["3", "0"]
    assert d["sip/line/VoiceCodecMap"][0] == "G722,PCMA,PCMU"
    assert d["dsskey/dssSide/Fkey/Value"] == ["SIP1", "1002@1/ba", "+4930123@2/f"]  # the X4U's 3 side keys
    assert d["dsskey/internal/Fkey/Value"][0] == "700@1/c"


# --- the record is the one place ---

def test_records_are_complete_and_used() -> None:
    for family in FAMILIES:
        record = family.record
        assert family.models is record.models and record.settings and record.ouis
        for model in record.models.values():
            assert model.source and model.accounts >= 1 and model.keys >= 1
        for setting in record.settings:
            assert setting.source and setting.meaning, setting.key
        assert record.notify.dialog in ("in-dialog", "out-of-dialog")
        # every source tag a fact names is a listed source
        texts = [m.source for m in record.models.values()] + [s.source for s in record.settings] + [
            record.notify.source, record.resync.source, record.languages_source, *record.ouis.values(),
            *record.files.values()]
        tags = {tag for text in texts for tag in re.findall(r"\[([A-Z0-9_]+)\]", text)}
        assert tags and tags <= set(record.sources), tags - set(record.sources)
    assert RECORDS["grandstream"].notify.dialog == "out-of-dialog"
    assert RECORDS["grandstream"].notify.body == "directory"


def test_listener_and_notifier_take_their_facts_from_the_records() -> None:
    from listener.vendors import identify, oui_vendor
    from notifier.settings import OUT_OF_DIALOG, IN_DIALOG, parse_dialog_policy, DialogPolicy

    for record in RECORDS.values():
        for prefix in record.ouis:
            assert oui_vendor(prefix + "0" * (12 - len(prefix))) == record.vendor
    assert identify({"vendor": "OEM"}, "", "00087b000001").vendor == "snom"
    policy = DialogPolicy()
    assert policy.mode_for("grandstream") == OUT_OF_DIALOG and policy.mode_for("yealink") == IN_DIALOG
    assert parse_dialog_policy("in-dialog").mode_for("grandstream") == IN_DIALOG
    assert parse_dialog_policy("vendor,snom=out-of-dialog").mode_for("snom") == OUT_OF_DIALOG
    assert str(parse_dialog_policy("vendor")) == "vendor"


def test_vendors_doc_is_current() -> None:
    out = subprocess.run([sys.executable, "-m", "generator.vendors.doc", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the simulated phones read the files as their firmware does ---

def test_grandstream_phone_refuses_an_unknown_p_value_or_an_mpk_mode_out_of_range() -> None:
    body = render("grandstream", "GRP2614", {"accounts": ACCOUNTS}).files[0].body
    check_file(VENDORS["grandstream"], "GRP2614", MAC, f"cfg{MAC}.xml", body)
    with pytest.raises(FileRefused, match="P99999"):
        check_file(VENDORS["grandstream"], "GRP2614", MAC, "x", body.replace(b"<P271>", b"<P99999>1</P99999><P271>"))
    with pytest.raises(FileRefused, match="P323"):
        check_file(VENDORS["grandstream"], "GRP2614", MAC, "x", body.replace(b"<P323>-1<", b"<P323>31<"))
    with pytest.raises(FileRefused, match="mac"):
        check_file(VENDORS["grandstream"], "GRP2614", "000b82000001", "x", body)


def test_yealink_phone_refuses_another_models_common_file_and_a_missing_header() -> None:
    files = render("yealink", "T46S", {"accounts": ACCOUNTS}).files
    check_file(VENDORS["yealink"], "T46S", MAC, files[0].name, files[0].body)
    with pytest.raises(FileRefused, match="y000000000065.cfg"):
        check_file(VENDORS["yealink"], "T48S", MAC, files[0].name, files[0].body)
    with pytest.raises(FileRefused, match="version"):
        check_file(VENDORS["yealink"], "T46S", MAC, files[1].name, files[1].body.split(b"\n", 1)[1])


def test_snom_phone_refuses_a_directory_as_setting_server() -> None:
    body = render("snom", "D785", full("snom")).files[0].body
    with pytest.raises(FileRefused, match="setting_server"):
        check_file(VENDORS["snom"], "D785", MAC, "x", body.replace(f"/cfg/{MAC}.xml".encode(), b"/cfg/"))


def test_notify_body_follows_the_record_unless_a_setting_overrides_it() -> None:
    from generator.settings import parse_notify_body

    a = {"accounts": ACCOUNTS}
    assert render("grandstream", "GRP2614", a).notify_path == ""  # the guide: the directory
    assert render("yealink", "T46S", a).notify_path == f"{MAC}.cfg"
    renderer = Renderer(notify_body=parse_notify_body("vendor,yealink=directory,grandstream=file"))
    assert renderer.render(MAC, "yealink", "T46S", "1", a).notify_path == ""
    assert renderer.render(MAC, "grandstream", "GRP2614", "1", a).notify_path == f"cfg{MAC}.xml"
    assert renderer.render(MAC, "snom", "D785", "1", a).notify_path == f"{MAC}.xml"
    for bad in ("", "yealink", "yealink=folder", "vendor,=file"):
        with pytest.raises(ValueError):
            parse_notify_body(bad)
