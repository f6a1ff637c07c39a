"""Naming a phone's vendor, model and firmware when its SUBSCRIBE does not say it plainly.

The Event parameters win when they are useful; Snom and others send ``vendor="OEM"``, so the
User-Agent and then the MAC's OUI (the maker of the network chip's owner) fill the gaps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Canonical names are lowercase: they name template directories downstream.
_KEYWORDS = [
    ("grandstream", "grandstream"), ("yealink", "yealink"), ("snom", "snom"),
    ("polycom", "polycom"), ("poly", "polycom"), ("fanvil", "fanvil"), ("gigaset", "gigaset"),
    ("htek", "htek"), ("openstage", "unify"), ("unify", "unify"), ("siemens", "unify"),
    ("panasonic", "panasonic"), ("aastra", "mitel"), ("mitel", "mitel"), ("cisco", "cisco"),
    ("linksys", "cisco"), ("audiocodes", "audiocodes"), ("audc", "audiocodes"),
    ("akuvox", "akuvox"), ("escene", "escene"), ("flyingvoice", "flyingvoice"),
]
_KEYWORD_RE = re.compile("|".join(re.escape(k) for k, _ in _KEYWORDS), re.I)
_KEYWORD_NAME = dict(_KEYWORDS)

# MAC prefixes (OUIs, or longer for a sub-range) of the vendors we provision come from their
# records (generator/vendors/<vendor>/record.py, each with its source); the others are the IEEE
# registry's entries for makers whose phones we only name.
_OTHER_OUIS = {
    "0004f2": "polycom", "64167f": "polycom",
    "7c2f80": "gigaset",
    "001fc1": "htek",
    "001ae8": "unify",
    "0080f0": "panasonic",
    "00085d": "mitel",
    "00908f": "audiocodes",
}


def _prefixes() -> dict[str, str]:
    from generator.vendors import RECORDS

    out = dict(_OTHER_OUIS)
    for record in RECORDS.values():
        for prefix in record.ouis:
            out[prefix.lower()] = record.vendor
    return out


OUI = _prefixes()
_PREFIX_LENGTHS = sorted({len(p) for p in OUI}, reverse=True)


def oui_vendor(mac: str) -> str:
    """The maker a MAC's prefix is registered to (longest prefix first: sub-ranges win), or ""."""
    for length in _PREFIX_LENGTHS:
        found = OUI.get(mac[:length])
        if found:
            return found
    return ""


# Values that say nothing about who made the phone.
_UNINFORMATIVE = {"", "oem", "unknown", "generic", "none", "null", "n/a", "-", "default"}

# "Vendor Model Firmware" (Grandstream, Yealink, Fanvil), "snomD765/10.1.33.33",
# "PolycomVVX-VVX_411-UA/6.3.0.14929", "AUDC-IPPhone/2.2.2".
_UA_SNOM = re.compile(r"snom\s*([A-Za-z0-9_+\-]+)[/ ]([0-9][\w.\-]*)", re.I)
_UA_POLY = re.compile(r"Polycom\w*-(\w+)-UA/([0-9][\w.\-]*)", re.I)
_UA_WORDS = re.compile(r"\s*([A-Za-z][\w\-]*)[ /]+([\w.+\-]+)[ /]+v?([0-9][\w.\-]*)")
_UA_SLASH = re.compile(r"\s*([\w\-]+)/v?([0-9][\w.\-]*)")


@dataclass(frozen=True)
class Identity:
    vendor: str
    model: str
    firmware: str


def _useful(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value.lower() in _UNINFORMATIVE else value


def canonical_vendor(text: str) -> str:
    """A known maker's canonical name, or the text itself made lowercase and topic-safe."""
    m = _KEYWORD_RE.search(text)
    if m:
        return _KEYWORD_NAME[m.group(0).lower()]
    return re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-")


def _from_user_agent(ua: str) -> tuple[str, str, str]:
    """(vendor, model, firmware) as far as the User-Agent tells them."""
    m = _UA_SNOM.search(ua)
    if m:
        return "snom", m.group(1), m.group(2)
    m = _UA_POLY.search(ua)
    if m:
        return "polycom", m.group(1), m.group(2)
    vendor_match = _KEYWORD_RE.search(ua)
    vendor = _KEYWORD_NAME[vendor_match.group(0).lower()] if vendor_match else ""
    m = _UA_WORDS.match(ua)
    if m:
        return vendor or canonical_vendor(m.group(1)), m.group(2), m.group(3)
    m = _UA_SLASH.match(ua)
    if m:
        return vendor, "", m.group(2)
    return vendor, "", ""


def identify(event: Mapping[str, str | None], user_agent: str, mac: str) -> Identity:
    """Vendor, model and firmware of a phone from its Event parameters, User-Agent and MAC."""
    said = _useful(event.get("vendor") or event.get("vender"))
    model = _useful(event.get("model"))
    firmware = _useful(event.get("version"))
    if said and model and firmware:  # the common case: no User-Agent regexes per packet
        return Identity(canonical_vendor(said), model, firmware)
    ua_vendor, ua_model, ua_firmware = _from_user_agent(user_agent) if user_agent else ("", "", "")
    vendor = canonical_vendor(said) if said else (ua_vendor or oui_vendor(mac))
    return Identity(vendor or "unknown", model or ua_model, firmware or ua_firmware)
