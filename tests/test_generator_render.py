"""Rendering without a broker: golden files per vendor family and model, parsed checks of every
setting an assignment sets, escaping, determinism across processes, and each rendering error.

Set PNP_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate template change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from generator import schema
from generator.merge import merge_all
from generator.render import Renderer
from generator.vendors import RenderProblem
from generator.vendors.grandstream import MODELS as GS_MODELS, mpk_p, vpk_p

GOLDEN = Path(__file__).parent / "golden" / "generator"
MAC = "000b82f55284"

FULL = {
    "accounts": [
        {"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret",
         "display_name": "Bob & <Alice> \"B\"", "label": "Desk", "transport": "tls", "port": 5071,
         "auth_id": "auth1001", "outbound_proxy": "sbc.example.com"},
        {"sip_server": "pbx2.example.com", "user_id": "2001", "password": "pw2", "display_name": "Second"},
    ],
    "codecs": ["g722", "pcma", "opus"],
    "keys": [
        {"type": "blf", "value": "1002", "label": "Carol"},
        {"type": "speed_dial", "value": "+4930123", "label": "Office", "account": 2},
    ],
    "provisioning": {"config_server": "https://prov.example.com/cfg", "check_interval": 1440},
    "time_zone": "Europe/Berlin",
    "ntp_server": "ntp.example.com",
    "admin_password": "adm1n",
    "vendor_settings": {"grandstream": {"P1362": "de"}, "yealink": {"lang.gui": "German"},
                        "snom": {"language": "Deutsch"}, "fanvil": {"phone.MenuPassword": "123"}},
}

CASES = [("grandstream", m) for m in sorted(GS_MODELS)] + [
    ("yealink", "T46S"), ("yealink", "T48S"), ("yealink", "T54W"), ("yealink", "T57W"), ("yealink", "T33G"),
    ("snom", "D785"), ("snom", "D735"), ("fanvil", "X4U"), ("fanvil", "X6U")]


def render(vendor: str, model: str, assignment: dict = FULL, renderer: Renderer | None = None):
    return (renderer or Renderer()).render(MAC, vendor, model, "1.0.0.1", assignment)


@pytest.mark.parametrize("vendor,model", CASES)
def test_golden_files_byte_for_byte(vendor: str, model: str) -> None:
    assert schema.first_problem(FULL) is None
    rendered = render(vendor, model)
    for f in rendered.files:
        golden = GOLDEN / f"{vendor}-{model}-{f.name.replace(MAC, 'MAC')}"
        if os.environ.get("PNP_UPDATE_GOLDEN"):
            golden.write_bytes(f.body)
        assert golden.exists(), f"no golden file {golden.name}; run with PNP_UPDATE_GOLDEN=1 once"
        assert f.body == golden.read_bytes(), f"{f.name} differs from {golden.name}"
        if f.content_type == "application/xml":
            ET.fromstring(f.body)  # well-formed


def _p_values(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)
    assert root.tag == "gs_provision" and root.get("version") == "1"
    assert root.findtext("mac") == MAC
    config = root.find("config")
    assert config is not None and config.get("version") == "1"
    return {child.tag: child.text or "" for child in config}


def test_grandstream_every_p_value_the_assignment_sets() -> None:
    rendered = render("grandstream", "GRP2614",
                      {**FULL, "keys": FULL["keys"] + [{"type": "park", "value": "700", "label": "Park"}]})
    assert [f.name for f in rendered.files] == [f"cfg{MAC}.xml"]
    assert rendered.notify_path == "" and rendered.template == "grandstream/grp26xx"
    p = _p_values(rendered.files[0].body)
    expected = {
        # account 1
        "P271": "1", "P270": "Desk", "P47": "pbx.example.com:5071", "P48": "sbc.example.com",
        "P35": "1001", "P36": "auth1001", "P34": "s3cret", "P3": 'Bob & <Alice> "B"', "P130": "2",
        # account 2
        "P401": "1", "P417": "Second", "P402": "pbx2.example.com", "P404": "2001", "P405": "2001",
        "P406": "pw2", "P407": "Second", "P448": "0",
        # accounts 3 and 4 of the GRP2614 switched off
        "P501": "0", "P601": "0",
        # vocoders in order, the last one repeated
        "P57": "9", "P58": "8", "P59": "123", "P60": "123", "P61": "123", "P62": "123", "P46": "123",
        "P98": "123",
        # resync allowed on both accounts
        "P26015": "0", "P26115": "0",  # no factory reset by NOTIFY
        # keys: BLF, speed dial on account 2, call park; fixed VPK 4 (no account 4) none
        "P1363": "1", "P1364": "0", "P1465": "Carol", "P1466": "1002",
        "P1365": "0", "P1366": "1", "P1467": "Office", "P1468": "+4930123",
        "P1367": "9", "P1368": "0", "P1469": "Park", "P1470": "700",
        "P1369": "-1",
        # dynamic VPKs 5-16 written as none (a skipped one would delete the later ones), MPKs none
        "P1371": "none", "P1373": "none", "P23800": "none", "P23836": "none", "P323": "-1", "P1460": "-1",
        # provisioning, DHCP not overriding it, time (the template's own list value), admin
        "P237": "prov.example.com/cfg", "P145": "0", "P212": "2", "P194": "1", "P193": "1440",
        "P64": "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00", "P143": "0", "P30": "ntp.example.com",
        "P2": "adm1n", "P4428": "0",
        # pass-through
        "P1362": "de",
    }
    for name, value in expected.items():
        assert p.get(name) == value, f"{name}: {p.get(name)!r} != {value!r}"


def test_smallest_assignment_renders_for_every_grp26xx_model() -> None:
    smallest = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret",
                              "display_name": "Alice"}]}
    assert schema.first_problem(smallest) is None
    for model in GS_MODELS:
        p = _p_values(render("grandstream", model, smallest).files[0].body)
        assert (p["P271"], p["P47"], p["P35"], p["P34"], p["P3"]) == ("1", "pbx.example.com", "1001", "s3cret", "Alice")


def test_grp2614_keys_beyond_vpks_become_mpks_and_beyond_that_an_error() -> None:
    keys = [{"type": "blf", "value": str(2000 + i)} for i in range(40)]
    p = _p_values(render("grandstream", "GRP2614", {**FULL, "keys": keys}).files[0].body)
    mode, account, label, value = vpk_p(16)
    assert (p[f"P{mode}"], p[f"P{value}"]) == ("1", "2015")
    mode, account, label, value = mpk_p(24)
    assert (p[f"P{mode}"], p[f"P{value}"]) == ("1", "2039")
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GRP2614", {**FULL, "keys": keys + [{"type": "blf", "value": "9"}]})
    assert caught.value.code == "model_limit" and caught.value.field == "keys[40]"
    assert "GRP2614 has 40 programmable keys" in caught.value.message
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GRP2612", {**FULL, "keys": keys[:17]})
    assert caught.value.field == "keys[16]"


def test_more_accounts_than_the_model_has_is_an_error() -> None:
    accounts = [{"sip_server": "pbx", "user_id": str(i)} for i in range(3)]
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GRP2612", {"accounts": accounts})
    assert caught.value.field == "accounts[2]" and "GRP2612 has 2 SIP account(s)" in caught.value.message


def test_unknown_vendor_or_model_names_them() -> None:
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GXP2170")
    assert caught.value.code == "no_template" and "GXP2170" in caught.value.message
    with pytest.raises(RenderProblem) as caught:
        render("polycom", "VVX411")
    assert caught.value.code == "no_template" and "polycom" in caught.value.message


def test_model_spellings_phones_send() -> None:
    assert render("Grandstream", "grp2614").model == "GRP2614"
    assert render("yealink", "SIP-T46S").model == "T46S"
    assert render("snom", "snomD785").model == "D785"


def test_yealink_common_and_per_mac_files() -> None:
    rendered = render("yealink", "T46S")
    assert [f.name for f in rendered.files] == ["y000000000066.cfg", f"{MAC}.cfg"]
    assert rendered.notify_path == f"{MAC}.cfg"
    lines = rendered.files[1].body.decode().splitlines()
    assert lines[0] == "#!version:1.0.0.1"
    settings = dict(line.split(" = ", 1) for line in lines if " = " in line)
    assert settings["account.1.sip_server.1.transport_type"] == "2"
    assert settings["account.1.display_name"] == 'Bob & <Alice> "B"'
    assert settings["linekey.2.line"] == "2" and settings["linekey.1.type"] == "16"
    assert settings["lang.gui"] == "German"
    common = rendered.files[0].body.decode()
    assert "local_time.time_zone = +1\n" in common and "local_time.start_time = 3/5/1/2\n" in common


def test_snom_and_fanvil_are_well_formed_xml_with_the_accounts() -> None:
    snom = ET.fromstring(render("snom", "D785").files[0].body)
    hosts = {e.get("idx"): e.text for e in snom.iter("user_host") if e.text}  # unused identities: empty
    assert hosts == {"1": "pbx.example.com:5071", "2": "pbx2.example.com"}
    outbound = {e.get("idx"): e.text for e in snom.iter("user_outbound")}
    assert outbound == {"1": "sbc.example.com:5071;transport=tls", "2": "pbx2.example.com:5060;transport=udp"}
    assert [e.text for e in snom.iter("fkey")][0] == "blf 1002"
    fanvil = ET.fromstring(render("fanvil", "X4U").files[0].body)
    line = fanvil.find("sip/line[@index='1']")
    assert line is not None and line.findtext("DisplayName") == 'Bob & <Alice> "B"'
    assert fanvil.findtext("phone/MenuPassword") == "123"


def test_key_types_a_family_cannot_show_are_errors() -> None:
    with pytest.raises(RenderProblem) as caught:
        render("fanvil", "X4U", {**FULL, "keys": [{"type": "intercom", "value": "1"}]})
    assert caught.value.field == "keys[0].type"
    # GRP2612: four fixed VPKs, so line keys only on VPK 1-4
    p = _p_values(render("grandstream", "GRP2612", {**FULL, "keys": [{"type": "line"}, {"type": "line"}]}).files[0].body)
    assert (p["P1363"], p["P1365"]) == ("31", "31")
    with pytest.raises(RenderProblem) as caught:
        render("grandstream", "GRP2612", {**FULL, "keys": [{"type": "none"}] * 4 + [{"type": "line"}]})
    assert caught.value.field == "keys[4].type"


def test_template_dir_overrides_model_then_family(tmp_path: Path) -> None:
    (tmp_path / "grandstream" / "grp2612").mkdir(parents=True)
    (tmp_path / "grandstream" / "grp2612" / "cfg.xml.j2").write_text("<x>{{ settings[0][1] }} {{ mac }}</x>\n")
    renderer = Renderer(tmp_path)
    assert render("grandstream", "GRP2612", renderer=renderer).files[0].body == f"<x>1 {MAC}</x>\n".encode()
    assert render("grandstream", "GRP2612", renderer=renderer).template == "grandstream/grp2612"
    # other models still use the built-in family template
    assert render("grandstream", "GRP2614", renderer=renderer).template == "grandstream/grp26xx"


def test_template_errors_are_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "grandstream" / "grp2612").mkdir(parents=True)
    (tmp_path / "grandstream" / "grp2612" / "cfg.xml.j2").write_text("{{ nosuchname }}\n")
    (tmp_path / "grandstream" / "grp2613").mkdir(parents=True)
    (tmp_path / "grandstream" / "grp2613" / "cfg.xml.j2").write_text("{{ mac.__class__.__mro__ }}\n")
    (tmp_path / "grandstream" / "grp2615").mkdir(parents=True)
    (tmp_path / "grandstream" / "grp2615" / "cfg.xml.j2").write_text("{% if %}\n")
    renderer = Renderer(tmp_path)
    for model, words in (("GRP2612", "nosuchname"), ("GRP2613", "unsafe"), ("GRP2615", "line 1")):
        with pytest.raises(RenderProblem) as caught:
            render("grandstream", model, renderer=renderer)
        assert caught.value.code == "template", model
        assert words in caught.value.message, caught.value.message


def test_same_inputs_same_bytes_in_another_process() -> None:
    here = [f.sha256 for vendor, model in CASES for f in render(vendor, model).files]
    code = (
        "import json,sys\n"
        "from generator.render import Renderer\n"
        f"cases={CASES!r}\n"
        "a=json.loads(sys.stdin.read())\n"
        f"print(json.dumps([f.sha256 for v,m in cases for f in Renderer().render({MAC!r},v,m,'1.0.0.1',a).files]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(FULL), capture_output=True, text=True,
                         env=env, check=True, cwd=Path(__file__).parent.parent)
    assert json.loads(out.stdout) == here


@pytest.mark.parametrize("doc,field,words", [
    ({"accounts": [{"sip_server": "pbx", "user_id": "1", "transport": "sctp"}]}, "accounts[0].transport",
     "'sctp'"),
    ({"accounts": [{"sip_server": "pbx"}]}, "accounts[0].user_id", "missing"),
    ({}, "accounts", "missing"),
    ({"accounts": [{"sip_server": "pbx", "user_id": "1", "colour": "red"}]}, "accounts[0].colour",
     "not a field"),
    ({"accounts": [{"sip_server": "pbx", "user_id": "1", "display_name": "a\nb"}]},
     "accounts[0].display_name", "control character"),
    ({"accounts": [{"sip_server": "pbx", "user_id": "1", "port": 70000}]}, "accounts[0].port", "at most 65535"),
    ({"accounts": [{"sip_server": "pbx", "user_id": "1"}], "codecs": ["g722", "g722"]}, "codecs", "same entry"),
    ({"accounts": "x"}, "accounts", "must be a list"),
])
def test_schema_problems_name_the_field_and_the_rule(doc: dict, field: str, words: str) -> None:
    problem = schema.first_problem(doc)
    assert problem is not None and problem.field == field and words in problem.message, problem


def test_profile_merge() -> None:
    default = {"codecs": ["pcmu"], "ntp_server": "ntp.default", "accounts": [{"sip_server": "pbx.default"}]}
    office = {"codecs": ["g722", "pcma"], "time_zone": "Europe/Paris", "admin_password": "x"}
    assignment = {"profile": "office", "accounts": [{"user_id": "1001"}], "admin_password": None}
    merged = merge_all(default, office, assignment)
    assert merged == {"codecs": ["g722", "pcma"], "ntp_server": "ntp.default", "time_zone": "Europe/Paris",
                      "profile": "office", "accounts": [{"sip_server": "pbx.default", "user_id": "1001"}]}
    assert schema.first_problem(merged) is None
    assert schema.first_problem({"codecs": ["g722"]}, partial=True) is None
    assert schema.first_problem({"codecs": ["mp3"]}, partial=True) is not None


def test_whole_numbers_written_as_floats_are_written_as_integers() -> None:
    # JSON Schema counts 5070.0 as an integer; a phone would not understand "5070.0"
    doc = {"accounts": [{"sip_server": "pbx", "user_id": "1", "port": 5070.0}],
           "provisioning": {"check_interval": 60.0}, "vendor_settings": {"grandstream": {"P1362": 2.0}}}
    assert schema.first_problem(doc) is None
    p = _p_values(render("grandstream", "GRP2614", doc).files[0].body)
    assert (p["P47"], p["P193"], p["P1362"]) == ("pbx:5070", "60", "2")


def test_template_dir_setting_must_exist(tmp_path: Path) -> None:
    from generator.settings import SETTINGS
    from services import settings as s

    assert s.resolve(SETTINGS, {"template_dir": str(tmp_path)}, environ={}).template_dir == tmp_path
    with pytest.raises(s.SettingError) as caught:
        s.resolve(SETTINGS, {}, environ={"PNP_TEMPLATE_DIR": str(tmp_path / "missing")})
    assert "PNP_TEMPLATE_DIR" in str(caught.value) and "an existing directory" in str(caught.value)


def test_grandstream_lines_are_its_settings_in_order() -> None:
    """The file's P-value lines are made from blocks prepared once per model (issue 15); whatever
    an assignment writes over them (keys, vendor_settings naming any P-value), the lines are
    exactly its settings, in order, as a custom template looping over ``settings`` prints them."""
    import random

    from generator import vendors
    from generator.vendors import ConfigServer, Target
    from generator.vendors.grandstream import _xml_line, context

    rng = random.Random(15)
    checked = 0
    for _ in range(400):
        family, model = vendors.find("grandstream", rng.choice(sorted(GS_MODELS)))
        info = family.models[model]
        accounts = rng.randint(1, info.accounts)
        a: dict = {"accounts": [{"sip_server": "pbx", "user_id": str(1000 + i), "password": "p&<",
                                 "transport": rng.choice(["udp", "tcp", "tls"])} for i in range(accounts)],
                   "keys": [{"type": rng.choice(["blf", "speed_dial", "none"]), "value": str(i), "label": f"k{i}",
                             "account": 1} for i in range(rng.randint(0, min(info.keys, 30)))]}
        if rng.random() < 0.5:
            a["codecs"] = rng.sample(["pcmu", "pcma", "g722", "opus"], rng.randint(1, 3))
        if rng.random() < 0.5:  # over account, key and server P-values, and new ones
            picks = rng.sample([270, 47, 1361, 4428, 99999, 323, 301, 1363, 1364, 414, 415, 416], 3)
            a["vendor_settings"] = {"grandstream": {f"P{p}": "x<" for p in picks}}
        server = ConfigServer("http://h:8080/c/", MAC, "pw") if rng.random() < 0.5 else None
        try:
            found = context(a, Target(MAC, "grandstream", model, "", info, server))
        except RenderProblem:
            continue
        assert found["config_lines"] == "\n".join(_xml_line(n, v) for n, v in found["settings"])
        checked += 1
    assert checked > 100


def test_yealink_lines_are_its_settings_in_order() -> None:
    """As for Grandstream: the per-phone file's lines are made from a line-key block prepared
    once per model; whatever an assignment writes over it, they are its settings, in order."""
    import random

    from generator import vendors
    from generator.vendors import ConfigServer, Target
    from generator.vendors.yealink import MODELS as YL_MODELS, context

    rng = random.Random(15)
    checked = 0
    for _ in range(300):
        family, model = vendors.find("yealink", rng.choice(sorted(YL_MODELS)))
        info = family.models[model]
        a: dict = {"accounts": [{"sip_server": "pbx", "user_id": str(1000 + i), "password": "p&<"}
                                for i in range(rng.randint(1, info.accounts))],
                   "keys": [{"type": rng.choice(["blf", "speed_dial", "line"]), "value": str(i), "label": f"k{i}",
                             "account": 1} for i in range(rng.randint(0, min(info.keys, 20)))]}
        if rng.random() < 0.5:
            a["codecs"] = rng.sample(["pcmu", "pcma", "g722", "opus"], rng.randint(1, 3))
        if rng.random() < 0.5:  # over account, key and server settings, and new ones
            picks = rng.sample(["account.1.label", "linekey.1.type", "linekey.3.label", "linekey.20.value",
                                "static.auto_provision.server.url", "features.x", "account.2.enable"], 3)
            a["vendor_settings"] = {"yealink": {p: "x" for p in picks}}
        server = ConfigServer("http://h:8080/c/", MAC, "pw") if rng.random() < 0.5 else None
        try:
            found = context(a, Target(MAC, "yealink", model, "", info, server))
        except RenderProblem:
            continue
        assert found["setting_lines"] == "".join(f"{n} = {v}\n" for n, v in found["settings"])
        checked += 1
    assert checked > 100
