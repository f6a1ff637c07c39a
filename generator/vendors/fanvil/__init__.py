"""Fanvil X-series: one ``{mac}.cfg`` in Fanvil's XML ``<sysConf>`` format (version 2), which
the NOTIFY names. Memory keys are written ``value@account/f`` (speed dial), ``/ba`` (BLF) and
``/c`` (call park); a line key is type 2.
"""

from __future__ import annotations

import re
from typing import Any

from generator.vendors import Family, FileSpec, ModelInfo, RenderProblem, Target
from generator.vendors import common

# accounts, DSS keys over all pages; keys per page
MODELS = {
    "X3U": ModelInfo(6, 6, {"page": 6}),
    "X4U": ModelInfo(12, 30, {"page": 6}),
    "X5U": ModelInfo(16, 32, {"page": 8}),
    "X6U": ModelInfo(20, 60, {"page": 12}),
}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
CODEC = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "g729": "G729", "opus": "OPUS"}
PROTOCOL = {"tftp": 2, "http": 4, "https": 5}
SUPPORTED_KEYS = {"none", "line", "speed_dial", "blf", "park"}
MEMORY_SUFFIX = {"speed_dial": "f", "blf": "ba", "park": "c"}
_RAW = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*$")


def context(a: dict, target: Target) -> dict[str, Any]:
    accounts = common.accounts(a, target)
    codecs = ",".join(CODEC[c] for c in a.get("codecs", []))
    lines = []
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            lines.append({"number": number, "enabled": False})
            continue
        acc = dict(accounts[number - 1])
        acc["transport_code"] = TRANSPORT[acc["transport"]]
        acc["codecs"] = codecs
        lines.append(acc)

    page = target.info.extra["page"]
    pages: dict[int, list[dict]] = {}
    for key in common.keys(a, target, SUPPORTED_KEYS):
        if key["type"] == "line":
            kind, value = 2, ""
        elif key["type"] == "none":
            kind, value = 0, ""
        else:
            kind, value = 1, f"{key['value']}@{key['account']}/{MEMORY_SUFFIX[key['type']]}"
        n = key["number"] - 1
        pages.setdefault(n // page + 1, []).append(
            {"index": n % page + 1, "type": kind, "value": value, "title": key["label"]})

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    provisioning = {}
    if "config_server" in prov:
        protocol, _ = common.location(prov["config_server"], protocol)
        provisioning = {"server": common.url(prov["config_server"], protocol),
                        "protocol": PROTOCOL.get(protocol, 4)}
    firmware = common.url(prov["firmware_server"], protocol) if "firmware_server" in prov else ""

    raw: dict[str, list[tuple[str, str]]] = {}
    for name, value in common.raw_settings(a, "fanvil"):
        if not _RAW.match(name):
            raise RenderProblem("schema", f"vendor_settings.fanvil.{name}: Fanvil settings are written "
                                "section.Element, such as phone.MenuPassword", f"vendor_settings.fanvil.{name}")
        section, element = name.split(".")
        raw.setdefault(section, []).append((element, value))
    return {"lines": lines, "pages": sorted(pages.items()), "provisioning": provisioning,
            "firmware": firmware, "ntp_server": a.get("ntp_server", ""),
            "admin_password": a.get("admin_password", ""), "raw": sorted(raw.items())}


FAMILY = Family(
    vendor="fanvil",
    name="xseries",
    models=MODELS,
    files=(FileSpec("mac.xml", "{mac}.cfg", "application/xml"),),
    notify_path="{mac}.cfg",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("FANVIL").strip(" -_"),
)
