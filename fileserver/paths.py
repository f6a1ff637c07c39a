"""Request paths, decided before anything is looked up: what a path asks for, or why it is bad.

Device file names and tokens use a small alphabet, so anything else in a path (percent
escapes, dot segments, backslashes) is a trick and is refused whole rather than decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_URI = 1024
_SAFE_PATH = re.compile(rb"/[A-Za-z0-9._~/-]*")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def is_file_name(name: str) -> bool:
    """A name we will store and serve: one path segment, no dot segments."""
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


@dataclass(frozen=True)
class Route:
    # "device" (token + name: the bootstrap URL), "credentialed" (c/ + name: the device's own
    # HTTP credentials), "plain" (name only), "health", "metrics", "none"
    kind: str
    token: str = ""
    name: str = ""


NONE = Route("none")


class BadPath(ValueError):
    pass


def route(uri: bytes, prefix: str = "/") -> Route:
    """What ``uri`` (the request target, query included) asks for; BadPath for tricks.

    ``prefix`` is the path of PNP_PUBLIC_URL (ending in ``/``): device paths live under it.
    """
    if len(uri) > MAX_URI:
        raise BadPath("request target too long")
    path = uri.split(b"?", 1)[0]
    if not _SAFE_PATH.fullmatch(path):
        raise BadPath("characters outside the path alphabet")
    text = path.decode("ascii")
    if "//" in text or any(seg in (".", "..") for seg in text.split("/")):
        raise BadPath("dot segment or empty segment")
    if text == "/healthz":
        return Route("health")
    if text == "/metrics":
        return Route("metrics")
    if not text.startswith(prefix):
        return NONE
    parts = text[len(prefix):].split("/")
    if len(parts) == 3 and parts[0] == "p" and _TOKEN.fullmatch(parts[1]) and is_file_name(parts[2]):
        return Route("device", parts[1], parts[2])
    if len(parts) == 2 and parts[0] == "c" and is_file_name(parts[1]):
        return Route("credentialed", name=parts[1])
    if len(parts) == 1 and is_file_name(parts[0]):
        return Route("plain", name=parts[0])
    return NONE
