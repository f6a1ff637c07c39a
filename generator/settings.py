"""Settings only the generator uses."""

from __future__ import annotations

from services.settings import Setting, parse_path, parse_positive_float

TEMPLATE_DIR = Setting(
    "template_dir", "PNP_TEMPLATE_DIR",
    "directory of templates that add to or override the built-in ones ({vendor}/{model|family}/{role}.j2)",
    parse_path, "a directory path", None,
)
SETTLE = Setting(
    "generator_settle", "PNP_GENERATOR_SETTLE",
    "seconds to wait after subscribing, for the retained messages, before the first rendering",
    parse_positive_float, "a number of seconds > 0", 0.3,
)

SETTINGS = [TEMPLATE_DIR, SETTLE]
