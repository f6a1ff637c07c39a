"""Grandstream GRP26xx: ``cfg{mac}.xml`` in the ``<gs_provision version="1">`` P-value format.

Every number here is a P-value of Grandstream's GRP261x configuration template (see
docs/GENERATOR.md for what was checked where). The context is one ordered list of
(P-value, text) pairs; the template only prints it.
"""

from __future__ import annotations

import re
from typing import Any

from generator.vendors import Family, FileSpec, ModelInfo, RenderProblem, Target
from generator.vendors import common

# accounts, VPKs (virtual keys on the main screen), MPKs (keys beside a second screen)
MODELS = {
    "GRP2601": ModelInfo(2, 2, {"vpk": 2, "mpk": 0}),
    "GRP2602": ModelInfo(4, 4, {"vpk": 4, "mpk": 0}),
    "GRP2603": ModelInfo(6, 6, {"vpk": 6, "mpk": 0}),
    "GRP2604": ModelInfo(6, 10, {"vpk": 10, "mpk": 0}),
    "GRP2612": ModelInfo(2, 16, {"vpk": 16, "mpk": 0}),
    "GRP2613": ModelInfo(3, 24, {"vpk": 24, "mpk": 0}),
    "GRP2614": ModelInfo(4, 40, {"vpk": 16, "mpk": 24}),
    "GRP2615": ModelInfo(5, 40, {"vpk": 40, "mpk": 0}),
    "GRP2616": ModelInfo(6, 40, {"vpk": 16, "mpk": 24}),
    "GRP2624": ModelInfo(6, 48, {"vpk": 48, "mpk": 0}),
    "GRP2634": ModelInfo(6, 48, {"vpk": 48, "mpk": 0}),
}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
VOCODER = {"pcmu": 0, "pcma": 8, "g722": 9, "g729": 18, "opus": 123}
UPGRADE_VIA = {"tftp": 0, "http": 1, "https": 2}
KEY_MODE = {"none": -1, "speed_dial": 0, "blf": 1, "dtmf": 5, "voicemail": 6, "transfer": 8,
            "park": 9, "intercom": 10, "line": 31}

# Account 1 has its own numbers; account n > 1 counts from a base (account 2: P401 ...).
ACCOUNT_1 = {"active": 271, "name": 270, "server": 47, "proxy": 48, "user_id": 35, "auth_id": 36,
             "password": 34, "display_name": 3, "transport": 130}
ACCOUNT_1_VOCODERS = (57, 58, 59, 60, 61, 62, 46, 98)
ACCOUNT_BASE = {2: 400, 3: 500, 4: 600, 5: 1700, 6: 1800}
ACCOUNT_N = {"active": 1, "name": 17, "server": 2, "proxy": 3, "user_id": 4, "auth_id": 5,
             "password": 6, "display_name": 7, "transport": 48}
ACCOUNT_N_VOCODERS = tuple(range(51, 59))


def account_p(number: int, what: str) -> int:
    if number == 1:
        return ACCOUNT_1[what]
    return ACCOUNT_BASE[number] + ACCOUNT_N[what]


def vocoder_p(number: int) -> tuple[int, ...]:
    if number == 1:
        return ACCOUNT_1_VOCODERS
    return tuple(ACCOUNT_BASE[number] + n for n in ACCOUNT_N_VOCODERS)


def vpk_p(n: int) -> tuple[int, int, int, int]:
    """(mode, account, description, value) of VPK n: 1-6 have fixed numbers, 7+ count from P23800."""
    if n <= 6:
        return 1363 + 2 * (n - 1), 1364 + 2 * (n - 1), 1465 + 2 * (n - 1), 1466 + 2 * (n - 1)
    base = 23800 + 4 * (n - 7)
    return base, base + 1, base + 2, base + 3


def mpk_p(n: int) -> tuple[int, int, int, int]:
    base = 23000 + 5 * (n - 1)
    return base, base + 1, base + 2, base + 3


_P = re.compile(r"^P[0-9]{1,5}$")


def _server(acc: dict) -> str:
    default = common.DEFAULT_PORTS[acc["transport"]]
    return acc["sip_server"] if acc["port"] == default else f"{acc['sip_server']}:{acc['port']}"


def context(a: dict, target: Target) -> dict[str, Any]:
    settings: dict[str, str] = {}

    def put(p: int, value: Any) -> None:
        settings[f"P{p}"] = common.text(value)

    accounts = common.accounts(a, target)
    codes = [VOCODER[c] for c in a.get("codecs", [])]
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            put(account_p(number, "active"), 0)
            continue
        acc = accounts[number - 1]
        put(account_p(number, "active"), 1 if acc["enabled"] else 0)
        put(account_p(number, "name"), acc["label"])
        put(account_p(number, "server"), _server(acc))
        put(account_p(number, "proxy"), acc["outbound_proxy"])
        put(account_p(number, "user_id"), acc["user_id"])
        put(account_p(number, "auth_id"), acc["auth_id"])
        put(account_p(number, "password"), acc["password"])
        put(account_p(number, "display_name"), acc["display_name"])
        put(account_p(number, "transport"), TRANSPORT[acc["transport"]])
        if codes:
            # Every choice slot needs a value; repeating the last choice adds nothing new.
            for slot, p in enumerate(vocoder_p(number)):
                put(p, codes[min(slot, len(codes) - 1)])

    vpks = target.info.extra["vpk"]
    for key in common.keys(a, target):
        n = key["number"]
        if n <= vpks:
            # Only the first VPKs are line keys ("fixed"); the template allows mode 31 only there.
            if key["type"] == "line" and n > target.info.accounts:
                raise RenderProblem("unsupported", f"keys[{n - 1}]: a line key must be one of the first "
                                    f"{target.info.accounts} keys of the {target.model}", f"keys[{n - 1}].type")
            mode_p, account_p_, label_p, value_p = vpk_p(n)
        else:
            if key["type"] == "line":
                raise RenderProblem("unsupported", f"keys[{n - 1}] is MPK {n - vpks} of the {target.model}; "
                                    "a line key must be one of its first "
                                    f"{vpks} keys (VPKs)", f"keys[{n - 1}].type")
            mode_p, account_p_, label_p, value_p = mpk_p(n - vpks)
        put(mode_p, KEY_MODE[key["type"]])
        put(account_p_, key["account"] - 1)
        put(label_p, key["label"])
        put(value_p, key["value"])

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    if "config_server" in prov:
        put(237, common.location(prov["config_server"], protocol)[1])
    if "firmware_server" in prov:
        put(192, common.location(prov["firmware_server"], protocol)[1])
    if protocol:
        put(212, UPGRADE_VIA.get(protocol, 1))
    interval = common.check_interval(prov)
    if interval is not None:
        put(194, 1 if interval else 0)
        if interval:
            put(193, interval)
    if "time_zone" in a:
        put(64, common.posix_tz(a["time_zone"]))
    if "ntp_server" in a:
        put(30, a["ntp_server"])
    if "admin_password" in a:
        put(2, a["admin_password"])
    for name, value in common.raw_settings(a, "grandstream"):
        if not _P.match(name):
            raise RenderProblem("schema", f"vendor_settings.grandstream.{name}: Grandstream settings are "
                                "P-values such as P1362", f"vendor_settings.grandstream.{name}")
        settings[name] = value
    return {"settings": list(settings.items())}


GRP26XX = Family(
    vendor="grandstream",
    name="grp26xx",
    models=MODELS,
    files=(FileSpec("cfg.xml", "cfg{mac}.xml", "application/xml"),),
    # The NOTIFY carries the directory: the phone appends cfg<mac>.xml itself.
    notify_path="",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("GRANDSTREAM").strip(" -_"),
)
