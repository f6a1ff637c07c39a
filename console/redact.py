"""What a role may see: passwords masked in file contents, working URLs cut for viewers.

Masking works on the values, not the file format: every password the device's assignment and
its profiles hold is replaced wherever it appears in the rendered file, whatever the vendor's
syntax. A password that only a raw ``vendor_settings`` entry carries under a name without
"pass" in it is not known to be one and is not masked: the content is for admins only anyway.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

MASK = "••••••"
_URL = re.compile(r"\b(https?://[^/\s\"'<>]+)(/[^\s\"'<>]*)?")
_SECRET_NAME = re.compile(r"pass|secret", re.I)


def secrets_in(*documents: Any) -> set[str]:
    """Every string held under a key that names a password or secret, at any depth."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, secret or (isinstance(k, str) and bool(_SECRET_NAME.search(k))))
        elif isinstance(value, list):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and value:
            found.add(value)

    for document in documents:
        walk(document, False)
    return found


def mask(text: str, secrets: Iterable[str]) -> str:
    # Longest first: a password that contains another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def cut_urls(text: str) -> str:
    """URLs without their path: the per-device secret path is what lets anyone download."""
    return _URL.sub(lambda m: m.group(1) + ("/…" if m.group(2) else ""), text)
