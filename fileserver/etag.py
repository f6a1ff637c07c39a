"""Entity tags and digests of a served file, and If-None-Match as RFC 9110 defines it."""

from __future__ import annotations

import base64
import re

# One entity-tag: optional W/ prefix, then a quoted string; phones also send bare tokens.
_TAG = re.compile(r'\s*(?:(W/)?"([^"]*)"|([^",\s]+))\s*(?:,|$)')


def etag(sha256_hex: str) -> str:
    """The strong entity-tag we send: the file's sha256, quoted."""
    return f'"{sha256_hex}"'


def repr_digest(sha256_hex: str) -> str:
    """``Repr-Digest`` field value (RFC 9530): base64 of the raw digest in a byte sequence."""
    raw = bytes.fromhex(sha256_hex)
    return "sha-256=:" + base64.b64encode(raw).decode("ascii") + ":"


def parse_if_none_match(value: str) -> tuple[bool, list[str]]:
    """``(any, opaque tags)`` of an If-None-Match value; weak and strong tags alike.

    A malformed member ends the parse: what came before still counts, so a client that
    sent our tag among garbage still gets its 304.
    """
    text = value.strip()
    if text == "*":
        return True, []
    tags: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TAG.match(text, pos)
        if m is None or m.end() == pos:
            break
        tags.append(m.group(2) if m.group(2) is not None else m.group(3))
        pos = m.end()
    return False, tags


def none_match(header_values: list[str], sha256_hex: str) -> bool:
    """True when the request's If-None-Match fields match the file (so the answer is 304).

    Weak comparison, as RFC 9110 13.1.2 requires for If-None-Match: ``W/"x"`` matches ``"x"``.
    Tag comparison ignores case: sha256 hex is the same digest either way.
    """
    want = sha256_hex.lower()
    for value in header_values:
        any_tag, tags = parse_if_none_match(value)
        if any_tag:
            return True
        if any(t.lower() == want for t in tags):
            return True
    return False
