"""Text from the network, made safe to show: control characters become visible escapes.

A phone's model, a User-Agent or a Call-ID can hold ESC sequences that clear or rewrite an
operator's terminal, line breaks that forge log lines, or bidi overrides that reorder what is
read. Everything that prints such text (the text log, ``pnp devices``, ``pnp monitor``) passes it
through :func:`printable`; JSON output goes through :func:`json_safe`.
"""

from __future__ import annotations

import re

# C0, DEL and C1 (U+0085 NEL and U+009B CSI among them: terminals act on both), the Unicode line
# and paragraph separators, and the bidi embeddings, overrides and isolates.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every unsafe character written as a Python-style escape (``\\x1b``, ``\\n``)."""
    if UNSAFE.search(text) is None:  # the common case costs one scan
        return text
    return UNSAFE.sub(_visible, text)


def json_safe(encoded: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the unsafe characters that
    JSON leaves raw (DEL, C1, U+2028/9, bidi controls) written as ``\\uXXXX``: the same JSON value,
    safe to print. JSON escapes C0 itself, and these characters can only occur inside strings."""
    if UNSAFE.search(encoded) is None:
        return encoded
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
