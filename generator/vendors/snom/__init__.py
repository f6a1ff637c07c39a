"""snom D-series: one XML settings file ``{mac}.xml`` (``<settings><phone-settings>`` with
indexed identity settings, ``<functionKeys>`` with ``<fkey>``). snom phones fetch the URL the
NOTIFY carries as it is, so the file is named in the NOTIFY.
"""

from __future__ import annotations

from typing import Any

import re

from generator.vendors import Family, FileSpec, ModelInfo, RenderProblem, Target
from generator.vendors import common

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

MODELS = {
    "D715": ModelInfo(4, 5),
    "D717": ModelInfo(6, 6),
    "D735": ModelInfo(12, 32),
    "D765": ModelInfo(12, 16),
    "D785": ModelInfo(12, 24),
}

SUPPORTED_KEYS = {"none", "line", "blf", "speed_dial", "dtmf", "transfer"}


def _host(acc: dict) -> str:
    host = acc["sip_server"]
    if acc["port"] != common.DEFAULT_PORTS[acc["transport"]]:
        host += f":{acc['port']}"
    if acc["transport"] != "udp":
        host += f";transport={acc['transport']}"
    return host


def _fkey(key: dict, accounts: list[dict]) -> str:
    kind, value = key["type"], key["value"]
    if kind == "none":
        return "none"
    if kind == "line":
        return "line"
    if kind == "blf":
        target = value if "@" in value else f"{value}@{accounts[key['account'] - 1]['sip_server']}"
        return f"blf sip:{target}"
    if kind == "speed_dial":
        return f"speed {value}"
    return f"{kind} {value}"


def context(a: dict, target: Target) -> dict[str, Any]:
    settings: list[tuple[str, str, str]] = []  # (name, idx or "", value)

    def put(name: str, value: Any, idx: int | str = "") -> None:
        settings.append((name, str(idx), common.text(value)))

    accounts = common.accounts(a, target)
    codecs = a.get("codecs")
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            put("user_active", "off", number)
            continue
        acc = accounts[number - 1]
        put("user_active", "on" if acc["enabled"] else "off", number)
        put("user_realname", acc["display_name"], number)
        put("user_name", acc["user_id"], number)
        put("user_pname", acc["auth_id"], number)
        put("user_pass", acc["password"], number)
        put("user_host", _host(acc), number)
        put("user_outbound", acc["outbound_proxy"], number)
        put("user_idle_text", acc["label"], number)
        if codecs:
            put("codec_priority_list", ",".join(codecs), number)

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    if "config_server" in prov:
        put("setting_server", common.url(prov["config_server"], protocol))
    if "firmware_server" in prov:
        put("firmware_status", common.url(prov["firmware_server"], protocol))
    interval = common.check_interval(prov)
    if interval is not None:
        put("settings_refresh_timer", interval * 60)
    if "time_zone" in a:
        put("utc_offset", common.utc_offset_minutes(common.posix_tz(a["time_zone"])) * 60)
    if "ntp_server" in a:
        put("ntp_server", a["ntp_server"])
    if "admin_password" in a:
        put("admin_mode_password", a["admin_password"])
        put("http_user", "admin")
        put("http_pass", a["admin_password"])
    raw = common.raw_settings(a, "snom")
    for name, _ in raw:
        if not _NAME.match(name):
            raise RenderProblem("schema", f"vendor_settings.snom.{name}: snom setting names are lower-case "
                                "words such as language", f"vendor_settings.snom.{name}")
    names = {name for name, _ in raw}
    settings = [s for s in settings if s[0] not in names or s[1]]
    for name, value in raw:
        put(name, value)
    fkeys = [{"idx": key["number"] - 1, "context": key["account"], "label": key["label"],
              "value": _fkey(key, accounts)}
             for key in common.keys(a, target, SUPPORTED_KEYS)]
    return {"settings": settings, "fkeys": fkeys}


FAMILY = Family(
    vendor="snom",
    name="dseries",
    models=MODELS,
    files=(FileSpec("settings.xml", "{mac}.xml", "application/xml"),),
    notify_path="{mac}.xml",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("SNOM").strip(" -_"),
)
