"""Fanvil X-series: one ``{mac}.cfg`` in Fanvil's XML ``<sysConf>`` format (version 2). Line
keys are ``SIP<n>`` in ``<dssSide>``, memory keys ``value@account/f|ba|c`` in ``<internal>``
pages. Every element, its values and its source are in ``record.py``.
"""

from __future__ import annotations

import re
from typing import Any

from generator.vendors import Family, FileSpec, RenderProblem, Target
from generator.vendors import common, tz
from generator.vendors.fanvil.record import (
    CODEC, MEMORY_SUFFIX, MODELS, PROTOCOL, RECORD, SUPPORTED_KEYS, TRANSPORT,
)
from generator.vendors.record import language

__all__ = ["FAMILY", "MODELS", "time_zone"]

_RAW = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*$")


def _change(zone: tz.Zone, change: tz.Change, prefix: str) -> list[tuple[str, str]]:
    if not change.whole_hour:
        raise tz.unsupported(zone, "fanvil", "its daylight-saving switch is not on a whole hour")
    return [(f"DST{prefix}Mon", str(change.month)), (f"DST{prefix}Week", "-1" if change.week == 5 else str(change.week)),
            (f"DST{prefix}Wday", str(change.weekday)), (f"DST{prefix}Hour", str(change.time // 3600))]


def time_zone(name: str) -> list[tuple[str, str]]:
    """The ``<phone><date>`` elements of a zone."""
    zone = tz.zone(name)
    if zone.std_offset % 3600 or abs(zone.std_offset) > 12 * 3600:
        raise tz.unsupported(zone, "fanvil", f"its offset {tz.hours_text(zone.std_offset)} is not a whole hour "
                             "between -12 and +12")
    hours = zone.std_offset // 3600
    label = "UCT" if hours == 0 else (f"UTC+{hours}" if hours > 0 else f"UTC-{-hours:02d}")
    out = [("TimeZone", str(hours * 4)), ("TimeZoneName", label)]
    if not zone.has_dst:
        return out + [("EnableDST", "0")]
    assert zone.start and zone.end
    if zone.save % 60 or not 0 < zone.save <= 3600:
        raise tz.unsupported(zone, "fanvil", "its daylight-saving offset is not 1 to 60 minutes")
    return (out + [("EnableDST", "2"), ("DSTFixedType", "2"), ("DSTMinOffset", str(zone.save // 60))]
            + _change(zone, zone.start, "Start") + _change(zone, zone.end, "End"))


def _key(key: dict | None) -> dict[str, Any]:
    if key is None or key["type"] == "none":
        return {"type": 0, "value": "", "title": key["label"] if key else ""}
    if key["type"] == "line":
        return {"type": 2, "value": f"SIP{key['account']}", "title": key["label"]}
    if not key["value"]:
        raise RenderProblem("schema", f"keys[{key['number'] - 1}]: a {key['type']} key needs a value",
                            f"keys[{key['number'] - 1}].value")
    return {"type": 1, "value": f"{key['value']}@{key['account']}/{MEMORY_SUFFIX[key['type']]}",
            "title": key["label"]}


def context(a: dict, target: Target) -> dict[str, Any]:
    accounts = common.accounts(a, target)
    codecs = ",".join(CODEC[c] for c in a.get("codecs", []))
    lines: list[dict[str, Any]] = []
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            lines.append({"number": number, "enabled": False})
            continue
        acc = dict(accounts[number - 1])
        acc["transport_code"] = TRANSPORT[acc["transport"]]
        acc["codecs"] = codecs
        lines.append(acc)

    extra = target.info.extra
    given = {k["number"]: k for k in common.keys(a, target, SUPPORTED_KEYS)}
    # Every key is written, so one dropped from the assignment is reset on the phone.
    side: list[dict[str, Any]] = [{"index": n, **_key(given.get(n))} for n in range(1, extra["side"] + 1)]
    pages: list[tuple[int, list[dict]]] = []
    for page in range(1, extra["pages"] + 1):
        first = extra["side"] + (page - 1) * extra["page"]
        pages.append((page, [{"index": i, **_key(given.get(first + i))} for i in range(1, extra["page"] + 1)]))

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    provisioning: dict[str, Any] = {}
    if "config_server" in prov:
        scheme, _ = common.location(prov["config_server"], protocol)
        if scheme not in PROTOCOL:
            raise RenderProblem("unsupported", f"provisioning: Fanvil phones are provisioned here over "
                                f"{' or '.join(PROTOCOL)} only, not {scheme}", "provisioning.protocol")
        provisioning = {"server": common.url(prov["config_server"], protocol), "protocol": PROTOCOL[scheme]}
    elif target.server is not None:
        # Our credentialed route; the phone joins FlashServerIP and FlashFileName with a "/".
        scheme, _ = common.location(target.server.url, None)
        provisioning = {"server": target.server.url.rstrip("/"), "protocol": PROTOCOL[scheme],
                        "user": target.server.user, "password": target.server.password}
    firmware = common.url(prov["firmware_server"], protocol) if "firmware_server" in prov else ""
    date = []
    if "ntp_server" in a:
        date += [("EnableSNTP", "1"), ("SNTPServer", a["ntp_server"])]
    if "time_zone" in a:
        date += time_zone(a["time_zone"])
    lang = language(RECORD, a["language"]) if "language" in a else ""

    pairs: list[tuple[str, str]] = []
    for line in lines:
        if not line["enabled"]:
            pairs += [(f"sip/line/{n}", "") for n in ("PhoneNumber", "DisplayName", "RegisterAddr", "RegisterUser",
                                                       "RegisterPswd")] + [("sip/line/EnableReg", "0")]
            continue
        pairs += [("sip/line/PhoneNumber", line["user_id"]), ("sip/line/DisplayName", line["display_name"]),
                  ("sip/line/RegisterAddr", line["sip_server"]), ("sip/line/RegisterPort", str(line["port"])),
                  ("sip/line/RegisterUser", line["auth_id"]), ("sip/line/RegisterPswd", line["password"]),
                  ("sip/line/EnableReg", "1"), ("sip/line/Transport", str(line["transport_code"])),
                  ("sip/line/ProxyAddr", line["outbound_proxy"])]
        if codecs:
            pairs.append(("sip/line/VoiceCodecMap", codecs))
    for where, keys in [("dssSide", side)] + [("internal", k) for _, k in pages]:
        for k in keys:
            pairs += [(f"dsskey/{where}/Fkey/Type", str(k["type"])), (f"dsskey/{where}/Fkey/Value", k["value"]),
                      (f"dsskey/{where}/Fkey/Title", k["title"])]
    if provisioning:
        pairs += [("ap/FlashServerIP", provisioning["server"]), ("ap/FlashProtocol", str(provisioning["protocol"]))]
        if "user" in provisioning:
            pairs += [("ap/DefaultUsername", provisioning["user"]), ("ap/DefaultPassword", provisioning["password"])]
    if firmware:
        pairs.append(("fwCheck/UpgradeServer1", firmware))
    pairs += [(f"phone/date/{n}", v) for n, v in date]
    if lang:
        pairs.append(("phone/display/DefaultLanguage", lang))
    if "admin_password" in a:
        pairs.append(("web/account/Password", a["admin_password"]))
    common.checked(RECORD, pairs)

    raw: dict[str, list[tuple[str, str]]] = {}
    for name, value in common.raw_settings(a, "fanvil"):
        if not _RAW.match(name):
            raise RenderProblem("schema", f"vendor_settings.fanvil.{name}: Fanvil settings are written "
                                "section.Element, such as phone.MenuPassword", f"vendor_settings.fanvil.{name}")
        section, element = name.split(".")
        raw.setdefault(section, []).append((element, value))
    # Raw elements of a section the file already has go inside it: a second <phone> would be a
    # document the phone may read either way.
    inside = {name: raw.pop(name) for name in _SECTIONS if name in raw}
    return {"lines": lines, "side": side, "pages": pages, "provisioning": provisioning, "firmware": firmware,
            "date": date, "language": lang, "admin_password": a.get("admin_password", ""),
            "raw": sorted(raw.items()), "raw_in": inside, "dsskey_lines": _dsskey_lines(side, pages),
            "sip_lines": _sip_lines(lines), "raw_lines": _raw_lines(inside)}


def _raw_lines(inside: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Per section of the file, its vendor_settings' lines (each ending in a newline), escaped as
    XML: printed as they are by the built-in template (a macro call per section cost more)."""
    x = common.xml_text
    return {section: "".join(f"    <{x(e)}>{x(v)}</{x(e)}>\n" for e, v in inside.get(section, ()))
            for section in _SECTIONS}


_UNUSED_LINE = ["      <PhoneNumber></PhoneNumber>", "      <DisplayName></DisplayName>",
                "      <RegisterAddr></RegisterAddr>", "      <RegisterUser></RegisterUser>",
                "      <RegisterPswd></RegisterPswd>", "      <EnableReg>0</EnableReg>"]


def _sip_lines(lines: list[dict[str, Any]]) -> str:
    """The <sip> element's accounts, escaped as XML: printed as they are by the built-in template
    (a template loop over them was most of a Fanvil rendering)."""
    x = common.xml_text
    out: list[str] = []
    for line in lines:
        out.append(f'    <line index="{line["number"]}">')
        if line["enabled"]:
            out += [f"      <PhoneNumber>{x(line['user_id'])}</PhoneNumber>",
                    f"      <DisplayName>{x(line['display_name'])}</DisplayName>",
                    f"      <RegisterAddr>{x(line['sip_server'])}</RegisterAddr>",
                    f"      <RegisterPort>{line['port']}</RegisterPort>",
                    f"      <RegisterUser>{x(line['auth_id'])}</RegisterUser>",
                    f"      <RegisterPswd>{x(line['password'])}</RegisterPswd>",
                    "      <EnableReg>1</EnableReg>",
                    f"      <Transport>{line['transport_code']}</Transport>",
                    f"      <ProxyAddr>{x(line['outbound_proxy'])}</ProxyAddr>"]
            if line["codecs"]:
                out.append(f"      <VoiceCodecMap>{x(line['codecs'])}</VoiceCodecMap>")
        else:
            out += _UNUSED_LINE
        out.append("    </line>")
    return "\n".join(out)


_SECTIONS = ("ap", "fwCheck", "phone", "web", "sip", "dsskey")


def _fkeys(keys: list[dict]) -> list[str]:
    x = common.xml_text
    return [line for k in keys for line in (
        f'      <Fkey index="{k["index"]}">', f"        <Type>{k['type']}</Type>",
        f"        <Value>{x(k['value'])}</Value>", f"        <Title>{x(k['title'])}</Title>", "      </Fkey>")]


def _dsskey_lines(side: list[dict], pages: list[tuple[int, list[dict]]]) -> str:
    """The <dsskey> element's content, escaped as XML: printed as it is by the built-in template
    (dozens of keys render far faster in one join than in a template loop)."""
    out = ['    <dssSide index="1">', *_fkeys(side), "    </dssSide>"]
    for number, keys in pages:
        out += [f'    <internal index="{number}">', *_fkeys(keys), "    </internal>"]
    return "\n".join(out)


FAMILY = Family(
    record=RECORD,
    files=(FileSpec("mac.xml", "{mac}.cfg", "application/xml"),),
    notify_file="{mac}.cfg",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("FANVIL").strip(" -_"),
)
