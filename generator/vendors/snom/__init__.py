"""snom D-series: one XML settings file ``{mac}.xml`` (``<settings><phone-settings>`` with
indexed identity settings, ``<functionKeys>`` with ``<fkey>``). Every setting, its values and
its source are in ``record.py``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from generator.vendors import Family, FileSpec, RenderProblem, Target
from generator.vendors import common, tz
from generator.vendors.record import language
from generator.vendors.snom.record import CODECS, MODELS, RECORD, SUPPORTED_KEYS

__all__ = ["FAMILY", "MODELS", "time_zone"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _change(zone: tz.Zone, change: tz.Change) -> str:
    if not 0 <= change.time < 24 * 3600:
        raise tz.unsupported(zone, "snom", "its daylight-saving switch is outside 00:00-23:59")
    weekday = (change.weekday + 6) % 7 + 1  # snom: 1 = Monday ... 7 = Sunday; POSIX: 0 = Sunday
    h, rest = divmod(change.time, 3600)
    return f"{change.month:02d}.{change.week:02d}.{weekday:02d} {h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def time_zone(name: str) -> list[tuple[str, str]]:
    zone = tz.zone(name)
    dst = ""
    if zone.has_dst:
        assert zone.start and zone.end
        dst = f"{zone.save} {_change(zone, zone.start)} {_change(zone, zone.end)}"
    return [("timezone", ""), ("utc_offset", f"{zone.std_offset:+d}"), ("dst", dst)]


def _fkey(key: dict) -> str:
    kind, value = key["type"], key["value"]
    if kind in ("none", "line"):
        return kind
    if kind == "transfer":
        if value:
            raise RenderProblem("unsupported", f"keys[{key['number'] - 1}]: a snom transfer key takes no value",
                                f"keys[{key['number'] - 1}].value")
        return "transfer"
    if not value:
        raise RenderProblem("schema", f"keys[{key['number'] - 1}]: a {kind} key needs a value",
                            f"keys[{key['number'] - 1}].value")
    return f"{'speed' if kind == 'speed_dial' else 'blf'} {value}"


def _fkey_checks(key: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"fkey{part}", key[field]) for part, field in (("", "value"), ("@context", "context"),
                                                            ("@label", "label"))]


def _fkey_line(key: dict[str, Any]) -> str:
    x = common.xml_text
    return (f'    <fkey idx="{key["idx"]}" context="{x(key["context"])}" label="{x(key["label"])}" '
            f'perm="">{x(key["value"])}</fkey>')


@functools.lru_cache(maxsize=32)
def _unused_fkeys(count: int) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    """Every function key as it is when the assignment leaves it out, and its line: made and
    checked once per number of keys (a file has up to a hundred; each was made per rendering)."""
    fkeys = tuple({"idx": n, "context": "active", "label": "", "value": "none"} for n in range(count))
    common.checked(RECORD, [check for key in fkeys for check in _fkey_checks(key)])
    return fkeys, tuple(_fkey_line(key) for key in fkeys)


def context(a: dict, target: Target) -> dict[str, Any]:
    settings: list[tuple[str, str, str]] = []  # (name, idx or "", value)

    def put(name: str, value: Any, idx: int | str = "") -> None:
        settings.append((name, str(idx), common.text(value)))

    accounts = common.accounts(a, target)
    codecs = [CODECS[c] for c in a.get("codecs", []) if c in CODECS]
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            # Switched off and emptied: no credentials of a removed account stay on the phone.
            put("user_active", "off", number)
            for name in ("user_realname", "user_name", "user_pname", "user_pass", "user_host", "user_idle_text"):
                put(name, "", number)
            continue
        acc = accounts[number - 1]
        put("user_active", "on" if acc["enabled"] else "off", number)
        put("user_realname", acc["display_name"], number)
        put("user_name", acc["user_id"], number)
        put("user_pname", acc["auth_id"], number)
        put("user_pass", acc["password"], number)
        default = common.DEFAULT_PORTS[acc["transport"]]
        put("user_host", acc["sip_server"] + ("" if acc["port"] == default else f":{acc['port']}"), number)
        put("user_outbound", f"{acc['outbound_proxy'] or acc['sip_server']}:{acc['port']};"
            f"transport={acc['transport']}", number)
        put("user_idle_text", acc["label"], number)
        if "codecs" in a:
            put("codec_priority_list", ",".join(codecs + ["telephone-event"]), number)

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    if "config_server" in prov:
        # The phone fetches exactly this URL: its own file, not the directory.
        put("setting_server", common.url(prov["config_server"], protocol).rstrip("/") + f"/{target.mac}.xml")
    server = target.server
    if server is not None:
        put("setting_server", f"{server.url}{target.mac}.xml")
        put("http_client_user", server.user)
        put("http_client_pass", server.password)
    if "firmware_server" in prov:
        firmware = common.url(prov["firmware_server"], protocol)
        if firmware.endswith(".xml"):
            put("firmware_status", firmware)
        elif firmware.endswith(".bin"):
            put("firmware", firmware)
        else:
            raise RenderProblem("unsupported", "provisioning.firmware_server: a snom phone needs the URL of a "
                                "<firmware-settings> file (.xml) or of the firmware file itself (.bin), not a "
                                "directory", "provisioning.firmware_server")
    interval = common.check_interval(prov)
    if interval is not None:
        put("settings_refresh_timer", interval * 60)
    if "time_zone" in a:
        for name, value in time_zone(a["time_zone"]):
            put(name, value)
    if "ntp_server" in a:
        put("ntp_server", a["ntp_server"])
    if "language" in a:
        lang = language(RECORD, a["language"])
        put("language", lang)
        put("web_language", lang)
    if "admin_password" in a:
        put("admin_mode_password", a["admin_password"])
        put("http_user", "admin")
        put("http_pass", a["admin_password"])
    given = {k["number"]: k for k in common.keys(a, target, SUPPORTED_KEYS)}
    # Every function key is written, so one dropped from the assignment is reset on the phone.
    unused, unused_lines = _unused_fkeys(target.info.keys)
    fkeys, key_lines = list(unused), list(unused_lines)
    written: list[dict[str, Any]] = []
    for n, key in sorted(given.items()):
        if 1 <= n <= len(fkeys):
            fkeys[n - 1] = {"idx": n - 1, "context": str(key["account"]), "label": key["label"],
                            "value": _fkey(key)}
            key_lines[n - 1] = _fkey_line(fkeys[n - 1])
            written.append(fkeys[n - 1])
    # the unused keys were checked with their block
    common.checked(RECORD, [(s[0], s[2]) for s in settings]
                   + [check for key in written for check in _fkey_checks(key)])
    raw = common.raw_settings(a, "snom")
    for name, _ in raw:
        if not _NAME.match(name):
            raise RenderProblem("schema", f"vendor_settings.snom.{name}: snom setting names are lower-case "
                                "words such as language", f"vendor_settings.snom.{name}")
    names = {name for name, _ in raw}
    settings = [s for s in settings if s[0] not in names or s[1]]
    for name, value in raw:
        put(name, value)
    # Printed as they are by the built-in template (one join is far faster than a template loop).
    x = common.xml_text
    setting_lines = "\n".join(
        f'    <{n} idx="{i}" perm="">{x(v)}</{n}>' if i else f'    <{n} perm="">{x(v)}</{n}>' for n, i, v in settings)
    fkey_lines = "\n".join(key_lines)
    return {"settings": settings, "fkeys": fkeys, "setting_lines": setting_lines, "fkey_lines": fkey_lines}


FAMILY = Family(
    record=RECORD,
    files=(FileSpec("settings.xml", "{mac}.xml", "application/xml"),),
    notify_file="{mac}.xml",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("SNOM").strip(" -_"),
)
