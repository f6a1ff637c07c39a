"""Grandstream GRP261x: ``cfg{mac}.xml`` in the ``<gs_provision version="1">`` P-value format.

Every P-value, its meaning, allowed values and source are in ``record.py``; the context is one
ordered list of (P-value, text) pairs, checked against the record, that the template only prints.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from generator.vendors import Family, FileSpec, RenderProblem, Target
from generator.vendors import common, tz
from generator.vendors.grandstream.record import (
    ACCOUNT_1, ACCOUNT_1_VOCODERS, ACCOUNT_BASE, ACCOUNT_N, ACCOUNT_N_VOCODERS, DYNAMIC_NONE, KEY_MODE,
    MODELS, P246_MAX, RECORD, SIP_RESET, TIME_ZONES, TRANSPORT, UPGRADE_VIA, VOCODER, mpk_p, vpk_p,
)
from generator.vendors.record import language

__all__ = ["FAMILY", "MODELS", "mpk_p", "vpk_p", "time_zone"]


def account_p(number: int, what: str) -> int:
    if number == 1:
        return ACCOUNT_1[what]
    return ACCOUNT_BASE[number] + ACCOUNT_N[what]


def vocoder_p(number: int) -> tuple[int, ...]:
    if number == 1:
        return ACCOUNT_1_VOCODERS
    return tuple(ACCOUNT_BASE[number] + n for n in ACCOUNT_N_VOCODERS)


_P = re.compile(r"^P[0-9]{1,5}$")
_ADMIN = re.compile(r"^[a-zA-Z0-9]*$")


def _server(acc: dict) -> str:
    default = common.DEFAULT_PORTS[acc["transport"]]
    return acc["sip_server"] if acc["port"] == default else f"{acc['sip_server']}:{acc['port']}"


def _listed() -> list[tuple[str, tz.Zone]]:
    out = []
    for minutes, value in TIME_ZONES:
        try:
            zone = tz.parse_posix(value)
        except RenderProblem:
            continue  # daylight saving without rules: what the firmware assumes is unknown
        # An entry whose POSIX meaning disagrees with its own label is never chosen.
        if zone.std_offset == minutes * 60:
            out.append((value, zone))
    return out


_LISTED = _listed()


def time_zone(name: str) -> tuple[str, str | None]:
    """(P64, P246): the template's list value with the zone's rule, else customize + the rule."""
    zone = tz.zone(name)
    for value, listed in _LISTED:
        if tz.same_rule(zone, listed):
            return value, None
    if len(zone.posix) > P246_MAX:
        raise tz.unsupported(zone, "grandstream", f"its rule {zone.posix!r} is longer than the "
                             f"{P246_MAX} characters P246 takes")
    return "customize", zone.posix


def _key(put: Callable[[int, Any], None], mode: int | str, account: int, label: str, value: str,
         p: tuple[int, int, int, int]) -> None:
    put(p[0], mode)
    put(p[1], account)
    put(p[2], label)
    put(p[3], value)


@functools.lru_cache(maxsize=65536)
def _xml_line(name: str, value: str) -> str:
    return f"    <{name}>{common.xml_text(value)}</{name}>"


# Blocks of settings that depend on the model, an account's number or the codecs but on no
# device: made and checked against the record once, then copied into each file (a file has about
# 200 P-values, most of them from these blocks; checking each one per rendering was a fifth of it).
def _block(pairs: list[tuple[int, Any]]) -> dict[str, str]:
    out = {f"P{p}": common.text(value) for p, value in pairs}
    common.checked(RECORD, list(out.items()))
    return out


@functools.lru_cache(maxsize=64)
def _unused_keys(model: str, accounts: int) -> dict[str, str]:
    """Every key of the model as it is when the assignment leaves it out, in key order: a fixed
    VPK the account's line (or none, beyond the accounts), a dynamic VPK "none", an MPK -1."""
    extra = MODELS[model].extra
    pairs: list[tuple[int, Any]] = []

    def put(p: int, value: Any) -> None:
        pairs.append((p, value))

    for n in range(1, extra["vpk"] + extra["mpk"] + 1):
        if n > extra["vpk"]:
            _key(put, KEY_MODE["none"], 0, "", "", mpk_p(n - extra["vpk"]))
        elif n <= extra["fixed"]:
            line = n <= accounts
            _key(put, KEY_MODE["line"] if line else KEY_MODE["none"], n - 1 if line else 0, "", "", vpk_p(n))
        else:
            _key(put, DYNAMIC_NONE, 0, "", "", vpk_p(n))
    return _block(pairs)


@functools.lru_cache(maxsize=64)
def _unused_key_lines(model: str, accounts: int) -> tuple[tuple[str, ...], dict[str, int]]:
    """The lines of :func:`_unused_keys`, and each name's place among them."""
    block = _unused_keys(model, accounts)
    return tuple(_xml_line(n, v) for n, v in block.items()), {n: i for i, n in enumerate(block)}


@functools.lru_cache(maxsize=16)
def _unused_account(number: int) -> dict[str, str]:
    # Switched off and emptied: no credentials of a removed account stay on the phone.
    return _block([(account_p(number, "active"), 0)] + [
        (account_p(number, what), "")
        for what in ("name", "server", "proxy", "user_id", "auth_id", "password", "display_name")])


@functools.lru_cache(maxsize=1024)
def _vocoders(number: int, codes: tuple[int, ...]) -> dict[str, str]:
    # Every choice slot needs a value; repeating the last choice adds nothing new.
    return _block([(vocoder, codes[min(slot, len(codes) - 1)])
                   for slot, vocoder in enumerate(vocoder_p(number))])


def context(a: dict, target: Target) -> dict[str, Any]:
    settings: dict[str, str] = {}
    written: list[str] = []  # names put one by one (the blocks above are checked already)

    def put(p: int, value: Any) -> None:
        name = f"P{p}"
        settings[name] = common.text(value)
        written.append(name)

    accounts = common.accounts(a, target)
    codes = tuple(VOCODER[c] for c in a.get("codecs", []))
    for number in range(1, target.info.accounts + 1):
        if number > len(accounts):
            settings.update(_unused_account(number))
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
        # "Allow SIP Reset" lets a NOTIFY (Event: reset) factory-reset the phone; a check-sync
        # needs no such thing, so it is written off: nobody on the LAN gets a reset switch.
        put(SIP_RESET[number], 0)
        if codes:
            settings.update(_vocoders(number, codes))

    extra = target.info.extra
    vpks, fixed, mpks = extra["vpk"], extra["fixed"], extra["mpk"]
    given = {k["number"]: k for k in common.keys(a, target)}
    # Every key the model has is written: a key dropped from the assignment is reset on the
    # phone, and a skipped dynamic VPK would delete every VPK after it.
    block_at, block = len(settings), _unused_keys(target.model, len(accounts))
    settings.update(block)
    block_alone = len(settings) == block_at + len(block)  # no name of it was written before
    written_before_block = len(written)
    for n, key in given.items():
        where = f"keys[{n - 1}]"
        if n <= vpks:
            p = vpk_p(n)
            if key["type"] == "line" and n > fixed:
                raise RenderProblem("unsupported", f"{where}: a line key must be one of the first {fixed} keys "
                                    f"(the fixed VPKs) of the {target.model}", f"{where}.type")
            if n <= fixed and (len(key["label"]) > 32 or len(key["value"]) > 64):
                raise RenderProblem("unsupported", f"{where}: on a fixed VPK of the {target.model} the label "
                                    "takes at most 32 characters and the value 64", where)
            mode: int | str = KEY_MODE[key["type"]]
            if n > fixed and key["type"] == "none":
                mode = DYNAMIC_NONE
        else:
            p = mpk_p(n - vpks)
            if key["type"] == "line":
                raise RenderProblem("unsupported", f"{where} is MPK {n - vpks} of the {target.model}; a line "
                                    f"key must be one of its first {fixed} keys (the fixed VPKs)", f"{where}.type")
            mode = KEY_MODE[key["type"]]
        _key(put, mode, key["account"] - 1, key["label"], key["value"], p)

    prov = a.get("provisioning", {})
    protocol = common.protocol_of(prov)
    if "config_server" in prov:
        put(237, common.location(prov["config_server"], protocol)[1])
        # Otherwise a DHCP server's option 66/43 replaces the config server written here.
        put(145, 0)
    if "firmware_server" in prov:
        put(192, common.location(prov["firmware_server"], protocol)[1])
    if protocol:
        put(212, UPGRADE_VIA.get(protocol, 1))
        if "firmware_server" in prov:
            put(6767, UPGRADE_VIA.get(protocol, 1))
    server = target.server
    if server is not None:
        # Our credentialed route: every download after Plug and Play proves who asks.
        scheme, rest = common.location(server.url, None)
        put(237, rest.rstrip("/"))
        put(145, 0)
        put(212, UPGRADE_VIA[scheme])
        put(1360, server.user)
        put(1361, server.password)
    interval = common.check_interval(prov)
    if interval is not None:
        put(194, 1 if interval else 0)
        if interval:
            put(193, interval)
    if "time_zone" in a:
        listed, custom = time_zone(a["time_zone"])
        put(64, listed)
        if custom is not None:
            put(246, custom)
        # Otherwise DHCP option 2 (a bare UTC offset) replaces the zone and its daylight saving.
        put(143, 0)
    if "ntp_server" in a:
        put(30, a["ntp_server"])
    if "admin_password" in a:
        if not _ADMIN.match(a["admin_password"]):
            raise RenderProblem("unsupported", "admin_password: Grandstream phones take only letters a-z, "
                                "A-Z and digits 0-9 (P2)", "admin_password")
        put(2, a["admin_password"])
    if "language" in a:
        put(1362, language(RECORD, a["language"]))
    # The phone challenges a NOTIFY (P4428 = 0); said explicitly, as the resync relies on it.
    put(4428, 0)
    if RECORD.problems([(name, settings[name]) for name in written]):
        # the whole file, in its order: the same first problem as ever is reported
        common.checked(RECORD, list(settings.items()))
    for name, value in common.raw_settings(a, "grandstream"):
        if not _P.match(name):
            raise RenderProblem("schema", f"vendor_settings.grandstream.{name}: Grandstream settings are "
                                "P-values such as P1362", f"vendor_settings.grandstream.{name}")
        settings[name] = value
        written.append(name)
    # The built-in template prints these lines as they are: a few hundred P-values per file are
    # rendered far faster in one join than by a template loop.
    items = list(settings.items())
    block_end = block_at + len(block)
    if not block_alone:
        lines = "\n".join(_xml_line(name, value) for name, value in items)
    else:
        # The keys' block (most of the file) took places of its own: its lines are made once per
        # model, and only the keys this device writes are made again.
        block_lines, places = _unused_key_lines(target.model, len(accounts))
        middle = list(block_lines)
        for name in written[written_before_block:]:
            place = places.get(name)
            if place is not None:
                middle[place] = _xml_line(name, settings[name])
        lines = "\n".join([_xml_line(name, value) for name, value in items[:block_at]] + middle
                          + [_xml_line(name, value) for name, value in items[block_end:]])
    return {"settings": items, "config_lines": lines}


FAMILY = Family(
    record=RECORD,
    files=(FileSpec("cfg.xml", "cfg{mac}.xml", "application/xml"),),
    notify_file="cfg{mac}.xml",
    context=context,
    canonical=lambda model: model.strip().upper().removeprefix("GRANDSTREAM").strip(" -_"),
)
GRP26XX = FAMILY
