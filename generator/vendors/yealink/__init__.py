"""Yealink T-series: a common file ``y0000000000xx.cfg`` (xx: the model's hardware id, the first
number of its firmware version) and a per-phone ``{mac}.cfg``, both ``key = value`` text that
starts with the mandatory ``#!version:1.0.0.1`` line. The per-phone file is what the NOTIFY names.
"""

from __future__ import annotations

from typing import Any

from generator.vendors import Family, FileSpec, ModelInfo, Target
from generator.vendors import common

# accounts, line keys (DSS keys over all pages), hardware id
MODELS = {
    "T33G": ModelInfo(4, 4, {"hw": 124}),
    "T41S": ModelInfo(6, 15, {"hw": 66}),
    "T42S": ModelInfo(12, 15, {"hw": 66}),
    "T46S": ModelInfo(16, 27, {"hw": 66}),
    "T48S": ModelInfo(16, 29, {"hw": 66}),
    "T53": ModelInfo(12, 21, {"hw": 95}),
    "T53W": ModelInfo(12, 21, {"hw": 95}),
    "T54W": ModelInfo(16, 27, {"hw": 96}),
    "T57W": ModelInfo(16, 29, {"hw": 97}),
}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}
CODECS = ("pcmu", "pcma", "g722", "g729", "opus")
KEY_TYPE = {"none": 0, "transfer": 3, "park": 10, "dtmf": 11, "voicemail": 12, "speed_dial": 13,
            "intercom": 14, "line": 15, "blf": 16}


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours}" if not rest else f"{sign}{hours}:{rest:02d}"


def context(a: dict, target: Target) -> dict[str, Any]:
    device: dict[str, str] = {}
    shared: dict[str, str] = {}

    def put(where: dict, name: str, value: Any) -> None:
        where[name] = common.text(value)

    accounts = common.accounts(a, target)
    codecs = a.get("codecs")
    for number in range(1, target.info.accounts + 1):
        p = f"account.{number}."
        if number > len(accounts):
            put(device, p + "enable", 0)
            continue
        acc = accounts[number - 1]
        put(device, p + "enable", 1 if acc["enabled"] else 0)
        put(device, p + "label", acc["label"])
        put(device, p + "display_name", acc["display_name"])
        put(device, p + "auth_name", acc["auth_id"])
        put(device, p + "user_name", acc["user_id"])
        put(device, p + "password", acc["password"])
        put(device, p + "sip_server.1.address", acc["sip_server"])
        put(device, p + "sip_server.1.port", acc["port"])
        put(device, p + "sip_server.1.transport_type", TRANSPORT[acc["transport"]])
        put(device, p + "outbound_proxy_enable", 1 if acc["outbound_proxy"] else 0)
        put(device, p + "outbound_proxy.1.address", acc["outbound_proxy"])
        if codecs:
            for codec in CODECS:
                chosen = codec in codecs
                put(device, p + f"codec.{codec}.enable", 1 if chosen else 0)
                put(device, p + f"codec.{codec}.priority", codecs.index(codec) + 1 if chosen else 0)

    for key in common.keys(a, target):
        p = f"linekey.{key['number']}."
        put(device, p + "type", KEY_TYPE[key["type"]])
        put(device, p + "line", key["account"])
        put(device, p + "value", key["value"])
        put(device, p + "label", key["label"])

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    if "config_server" in prov:
        server = common.url(prov["config_server"], protocol)
        put(shared, "static.auto_provision.server.url", server)
        # The NOTIFY names only the per-phone file: it must also say where to look next time.
        put(device, "static.auto_provision.server.url", server)
    if "firmware_server" in prov:
        put(shared, "static.firmware.url", common.url(prov["firmware_server"], protocol))
    interval = common.check_interval(prov)
    if interval is not None:
        put(shared, "static.auto_provision.repeat.enable", 1 if interval else 0)
        if interval:
            put(shared, "static.auto_provision.repeat.minutes", interval)
    if "time_zone" in a:
        put(shared, "local_time.time_zone", _offset(common.utc_offset_minutes(common.posix_tz(a["time_zone"]))))
    if "ntp_server" in a:
        put(shared, "local_time.ntp_server1", a["ntp_server"])
    if "admin_password" in a:
        put(device, "static.security.user_password", f"admin:{a['admin_password']}")
    for name, value in common.raw_settings(a, "yealink"):
        device[name] = value
    return {"settings": list(device.items()), "common_settings": list(shared.items()),
            "names": {"hw": f"{target.info.extra['hw']:012d}"}}


FAMILY = Family(
    vendor="yealink",
    name="tseries",
    models=MODELS,
    files=(FileSpec("common.cfg", "y{hw}.cfg", "text/plain; charset=utf-8"),
           FileSpec("mac.cfg", "{mac}.cfg", "text/plain; charset=utf-8")),
    notify_path="{mac}.cfg",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("YEALINK").strip(" -_").removeprefix("SIP-"),
)
