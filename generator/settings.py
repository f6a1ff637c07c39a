"""Settings only the generator uses."""

from __future__ import annotations

from pathlib import Path

from services.settings import Setting, parse_path, parse_positive_float
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

SETTINGS = [TEMPLATE_DIR, SETTLE, GENERATOR_SHARD]
