"""Yealink T-series: a common file ``y000000000xxx.cfg`` (xxx: the model's id in ``record.py``)
and a per-phone ``{mac}.cfg``, both ``key = value`` text that starts with the mandatory
``#!version:1.0.0.1`` line. Every key, its values and its source are in ``record.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from generator.vendors import Family, FileSpec, RenderProblem, Target
from generator.vendors import common, tz
from generator.vendors.record import language
from generator.vendors.yealink.record import CODECS, KEY_TYPE, MODELS, NULL, RECORD, TRANSPORT

__all__ = ["FAMILY", "MODELS", "time_zone"]


def _change(zone: tz.Zone, change: tz.Change) -> str:
    if not change.whole_hour:
        raise tz.unsupported(zone, "yealink", "its daylight-saving switch is not on a whole hour")
    # Yealink counts weekdays from 1 = Sunday (POSIX: 0 = Sunday).
    return f"{change.month}/{change.week}/{change.weekday + 1}/{change.time // 3600}"


def time_zone(name: str) -> list[tuple[str, str]]:
    zone = tz.zone(name)
    out = [("local_time.time_zone", tz.hours_text(zone.std_offset))]
    if not zone.has_dst:
        return out + [("local_time.summer_time", "0")]
    assert zone.start and zone.end
    return out + [("local_time.summer_time", "1"), ("local_time.dst_time_type", "1"),
                  ("local_time.start_time", _change(zone, zone.start)),
                  ("local_time.end_time", _change(zone, zone.end)),
                  ("local_time.offset_time", str(zone.save // 60))]


_SUPPORTED = set(KEY_TYPE)


@functools.lru_cache(maxsize=32)
def _unused_account(number: int) -> dict[str, str]:
    """An account dropped from the assignment: disabled and back to its factory values."""
    p = f"account.{number}."
    out = {p + "enable": "0", **{p + name: NULL for name in (
        "label", "display_name", "auth_name", "user_name", "password", "sip_server.1.address",
        "sip_server.1.port", "sip_server.1.transport_type")}}
    common.checked(RECORD, list(out.items()))  # once: a rendering checks only what it writes
    return out


@functools.lru_cache(maxsize=32)
def _unused_keys(count: int) -> dict[str, str]:
    """Line keys 1..count as they are when the assignment leaves them out (factory values)."""
    out = {}
    for n in range(1, count + 1):
        out[f"linekey.{n}.type"] = str(KEY_TYPE["none"])
        for name in ("line", "value", "label"):
            out[f"linekey.{n}.{name}"] = NULL
    common.checked(RECORD, list(out.items()))  # once: a rendering checks only what it writes
    return out


@functools.lru_cache(maxsize=32)
def _unused_key_lines(count: int) -> tuple[tuple[str, ...], dict[str, int]]:
    """The lines of :func:`_unused_keys`, and each name's place among them."""
    block = _unused_keys(count)
    return tuple(f"{n} = {v}\n" for n, v in block.items()), {n: i for i, n in enumerate(block)}


def context(a: dict, target: Target) -> dict[str, Any]:
    device: dict[str, str] = {}
    shared: dict[str, str] = {}
    written: list[str] = []  # names put into ``device`` one by one (the blocks are checked already)

    def put(where: dict, name: str, value: Any) -> None:
        where[name] = common.text(value)
        if where is device:
            written.append(name)

    accounts = common.accounts(a, target)
    codecs = a.get("codecs")
    for number in range(1, target.info.accounts + 1):
        p = f"account.{number}."
        if number > len(accounts):
            device.update(_unused_account(number))
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

    given = {k["number"]: k for k in common.keys(a, target, _SUPPORTED)}
    # Every line key is written, so one dropped from the assignment is reset on the phone.
    block_at, block = len(device), _unused_keys(target.info.keys)
    device.update(block)
    block_alone = len(device) == block_at + len(block)  # no name of it was written before
    written_before_block = len(written)
    for n, key in given.items():
        p = f"linekey.{n}."
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
    ours = target.server
    if ours is not None:
        # In the per-phone file only: the common file is the same for every phone of the model.
        put(device, "static.auto_provision.server.url", ours.url)
        put(device, "static.auto_provision.server.username", ours.user)
        put(device, "static.auto_provision.server.password", ours.password)
    if "firmware_server" in prov:
        firmware = common.url(prov["firmware_server"], protocol)
        if not firmware.endswith(".rom"):
            raise RenderProblem("unsupported", "provisioning.firmware_server: a Yealink phone needs the URL of "
                                "the firmware file itself (ending in .rom), not a directory; give it for "
                                "Yealink models in their own profile", "provisioning.firmware_server")
        put(shared, "static.firmware.url", firmware)
    interval = common.check_interval(prov)
    if interval is not None:
        put(shared, "static.auto_provision.repeat.enable", 1 if interval else 0)
        if interval:
            put(shared, "static.auto_provision.repeat.minutes", interval)
    if "time_zone" in a:
        for name, value in time_zone(a["time_zone"]):
            put(shared, name, value)
    if "ntp_server" in a:
        put(shared, "local_time.ntp_server1", a["ntp_server"])
    if "language" in a:
        lang = language(RECORD, a["language"])
        put(shared, "lang.gui", lang)
        put(shared, "lang.wui", lang)
    if "admin_password" in a:
        put(device, "static.security.user_password", f"admin:{a['admin_password']}")
    if RECORD.problems([(name, device[name]) for name in written] + list(shared.items())):
        # all of it, in the files' order: the same first problem as ever is reported
        common.checked(RECORD, list(device.items()) + list(shared.items()))
    for name, value in common.raw_settings(a, "yealink"):
        device[name] = value
        written.append(name)
    items = list(device.items())
    block_end = block_at + len(block)
    if block_alone:
        # The line keys' block (most of the file) took places of its own: its lines are made once
        # per model, and only the keys this device writes are made again.
        block_lines, places = _unused_key_lines(target.info.keys)
        middle = list(block_lines)
        for name in written[written_before_block:]:
            place = places.get(name)
            if place is not None:
                middle[place] = f"{name} = {device[name]}\n"
        setting_lines = "".join([f"{n} = {v}\n" for n, v in items[:block_at]] + middle
                                + [f"{n} = {v}\n" for n, v in items[block_end:]])
    else:
        setting_lines = "".join(f"{n} = {v}\n" for n, v in items)
    return {"settings": items, "common_settings": list(shared.items()),
            # printed as they are by the built-in templates (one join beats a template loop)
            "setting_lines": setting_lines,
            "common_lines": "".join(f"{n} = {v}\n" for n, v in shared.items()),
            "names": {"hw": f"{target.info.extra['hw']:03d}"}}


FAMILY = Family(
    record=RECORD,
    files=(FileSpec("common.cfg", "y000000000{hw}.cfg", "text/plain; charset=utf-8"),
           FileSpec("mac.cfg", "{mac}.cfg", "text/plain; charset=utf-8")),
    notify_file="{mac}.cfg",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("YEALINK").strip(" -_").removeprefix("SIP-"),
)
