"""The phone's MAC address, from the way each vendor writes it into a SUBSCRIBE."""

from __future__ import annotations

import re
from urllib.parse import unquote

from services.sip.message import SipParseError, parse_name_addr, parse_uri

# Field spellings of the user part: MAC%3A000B82F55284 (Grandstream), MAC%3a... (Snom),
# MAC:..., MAC=..., MAC001565f4f9e1 (Yealink), or the bare address. Separators inside the
# address (00-1A-E8-..., 00:0b:82:...) are tolerated.
_PREFIX = re.compile(r"\A\s*(?:mac\s*[:=]?\s*)?", re.I)
_SEPARATORS = re.compile(r"[:\-.]")
_HEX12 = re.compile(r"[0-9a-f]{12}\Z")


# The spellings phones send (the first three above, and the bare address), read in one match:
# what the general path below makes of these, without its unquoting and substitutions.
_COMMON = re.compile(r"(?:mac(?:%3a|[:=])?)?([0-9a-f]{12})", re.I)


def normalize(text: str) -> str | None:
    """12 lowercase hex digits, or None when ``text`` is not a usable unicast MAC."""
    common = _COMMON.fullmatch(text)
    if common is not None:
        value = common.group(1).lower()
    else:
        value = _SEPARATORS.sub("", _PREFIX.sub("", unquote(text), count=1)).lower()
        if not _HEX12.match(value):
            return None
    # A phone's own address is unicast, and never all zeros.
    if int(value[1], 16) & 1 or value == "000000000000":
        return None
    return value


def from_user(uri: str) -> str | None:
    try:
        user = parse_uri(uri).user
    except SipParseError:
        return None
    return normalize(user) if user else None


def from_subscribe(request_uri: str, from_value: str | None) -> str | None:
    """The MAC in the Request-URI's user part, else in the From URI's, else None."""
    mac = from_user(request_uri)
    if mac is None and from_value:
        try:
            mac = from_user(parse_name_addr(from_value).uri)
        except SipParseError:
            return None
    return mac
