"""The generator's settings: ``SETTINGS``, every one it reads besides the common ones."""

from __future__ import annotations

import re
from pathlib import Path

from services.settings import PUBLIC_URL, Setting, parse_path, parse_positive_float
from services.shard import MAX_SHARDS, Shard, parse_shard


def parse_directory(text: str) -> Path:
    path = parse_path(text)
    if not path.is_dir():
        raise ValueError
    return path


TEMPLATE_DIR = Setting(
    "template_dir", "PNP_TEMPLATE_DIR",
    "directory of templates that add to or override the built-in ones ({vendor}/{model|family}/{role}.j2)",
    parse_directory, "an existing directory", None,
)
SETTLE = Setting(
    "generator_settle", "PNP_GENERATOR_SETTLE",
    "seconds to wait after subscribing, for the retained messages, before the first rendering",
    parse_positive_float, "a number of seconds > 0", 0.3,
)

GENERATOR_SHARD = Setting(
    "generator_shard", "PNP_GENERATOR_SHARD",
    "k/n: this generator renders only the MACs of shard k of n (crc32(mac) mod n = k-1); "
    "run n generators with 1/n ... n/n on one broker",
    parse_shard, f"k/n with 1 <= k <= n <= {MAX_SHARDS}, e.g. 1/2", Shard(),
)

_BODIES = ("directory", "file")


def parse_notify_body(text: str) -> dict[str, str]:
    """``vendor`` (each vendor's record), then optional ``vendor=directory|file`` overrides:
    ``vendor,yealink=directory``."""
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError
    out: dict[str, str] = {}
    for item in items:
        vendor, eq, body = item.partition("=")
        if not eq:
            if vendor != "vendor":
                raise ValueError
            continue
        if body.strip() not in _BODIES or not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", vendor.strip()):
            raise ValueError
        out[vendor.strip()] = body.strip()
    return out


NOTIFY_BODY = Setting(
    "notify_body", "PNP_NOTIFY_BODY",
    "what the Plug and Play NOTIFY carries (notify_path): vendor (each vendor's record: Grandstream the "
    "directory, as its guide shows; the others their per-phone file, unconfirmed), with vendor=directory "
    "or vendor=file overrides, e.g. vendor,yealink=directory",
    parse_notify_body, "vendor, then optional vendor=directory|file items, comma-separated", {},
)

# The fileserver's base URL: each file tells its phone to fetch from {PNP_PUBLIC_URL}c/ with its
# own credentials; the generator must be given the same value as the fileserver.
SETTINGS = [TEMPLATE_DIR, SETTLE, GENERATOR_SHARD, NOTIFY_BODY, PUBLIC_URL]
