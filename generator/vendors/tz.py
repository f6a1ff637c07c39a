"""Time zones: an IANA name (or a POSIX TZ string) to its standard offset and daylight-saving
rule, read from the system's tz database through ``zoneinfo``; each vendor family turns the
result into its own settings.

Only the current rule matters to a phone: it is the POSIX TZ footer of the zone's TZif file
(RFC 8536 §3.3), which ``zoneinfo`` reads but does not expose, so this module locates the file on
``zoneinfo.TZPATH`` after ``zoneinfo`` has accepted the name. A zone whose rule a vendor cannot
write is a :class:`RenderProblem` naming the zone (``unsupported``), never a wrong clock.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from generator.vendors import RenderProblem


@dataclass(frozen=True)
class Change:
    """A daylight-saving switch: POSIX ``Mm.w.d/time`` (week 5 = the last; weekday 0 = Sunday;
    ``time`` in seconds of local wall-clock time before the switch)."""

    month: int
    week: int
    weekday: int
    time: int

    @property
    def whole_hour(self) -> bool:
        return self.time % 3600 == 0 and 0 <= self.time < 24 * 3600


@dataclass(frozen=True)
class Zone:
    name: str  # as the assignment gave it
    posix: str  # the POSIX TZ string the rule came from
    std_offset: int  # seconds east of UTC
    dst_offset: int | None = None  # seconds east of UTC during daylight saving; None: no DST
    start: Change | None = None
    end: Change | None = None

    @property
    def has_dst(self) -> bool:
        return self.dst_offset is not None

    @property
    def save(self) -> int:
        """Seconds the clock moves forward for daylight saving."""
        return (self.dst_offset - self.std_offset) if self.dst_offset is not None else 0


def unsupported(zone: Zone, vendor: str, why: str) -> RenderProblem:
    return RenderProblem("unsupported", f"time_zone {zone.name!r} cannot be expressed on {vendor} phones: "
                         f"{why}", "time_zone")


_NAME = r"(?:<[A-Za-z0-9+\-]+>|[A-Za-z]{3,})"
_OFFSET = r"[+-]?\d{1,3}(?::\d{2}){0,2}"
_RULE = r"(?:M\d{1,2}\.\d\.\d|J\d{1,3}|\d{1,3})(?:/" + _OFFSET + r")?"
_POSIX = re.compile(rf"^(?P<std>{_NAME})(?P<stdoff>{_OFFSET})"
                    rf"(?:(?P<dst>{_NAME})(?P<dstoff>{_OFFSET})?(?:,(?P<start>{_RULE}),(?P<end>{_RULE}))?)?$")


def _seconds(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    parts = [int(p) for p in text.lstrip("+-").split(":")] + [0, 0]
    return sign * (parts[0] * 3600 + parts[1] * 60 + parts[2])


def _change(text: str, name: str) -> Change:
    rule, _, at = text.partition("/")
    if not rule.startswith("M"):
        raise RenderProblem("unsupported", f"time_zone {name!r}: its rule {text!r} counts days of the year; "
                            "phones only take month/week/weekday rules", "time_zone")
    month, week, weekday = (int(x) for x in rule[1:].split("."))
    if not (1 <= month <= 12 and 1 <= week <= 5 and 0 <= weekday <= 6):
        raise RenderProblem("schema", f"time_zone {name!r}: {text!r} is not a valid rule", "time_zone")
    return Change(month, week, weekday, _seconds(at) if at else 2 * 3600)


def parse_posix(text: str, name: str | None = None) -> Zone:
    """A :class:`Zone` from a POSIX TZ string (``CET-1CEST,M3.5.0,M10.5.0/3``)."""
    name = name or text
    m = _POSIX.match(text)
    if not m:
        raise RenderProblem("schema", f"time_zone {name!r} is neither a time zone name (Europe/Berlin) "
                            "nor a POSIX TZ string (CET-1CEST,M3.5.0,M10.5.0/3)", "time_zone")
    std = -_seconds(m["stdoff"])  # POSIX counts west of UTC: CET-1 is UTC+1
    if not m["dst"]:
        return Zone(name, text, std)
    dst = -_seconds(m["dstoff"]) if m["dstoff"] else std + 3600
    if not m["start"]:
        # Rules left to the implementation: what a phone would assume is unknown.
        raise RenderProblem("unsupported", f"time_zone {name!r} has daylight saving but no rules "
                            "(write them: ...,M3.2.0,M11.1.0)", "time_zone")
    return Zone(name, text, std, dst, _change(m["start"], name), _change(m["end"], name))


def _footer(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise RenderProblem("schema", f"time_zone {name!r} is not a known time zone name", "time_zone") from None
    for base in zoneinfo.TZPATH:
        path = Path(base) / name
        try:
            if path.resolve().is_relative_to(Path(base).resolve()) and path.is_file():
                return path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("ascii")
        except (OSError, UnicodeDecodeError):
            continue
    raise RenderProblem("unsupported", f"time_zone {name!r}: the tz database has no rule for it "
                        "(no POSIX footer in its file)", "time_zone")


@functools.lru_cache(maxsize=512)
def zone(value: str) -> Zone:
    """The zone an assignment's ``time_zone`` names: an IANA name, else a POSIX TZ string."""
    if "/" in value or value in ("UTC", "GMT") or not _POSIX.match(value):
        footer = _footer(value)
        if not footer:
            raise RenderProblem("unsupported", f"time_zone {value!r}: the tz database gives no current "
                                "rule for it", "time_zone")
        return parse_posix(footer, value)
    return parse_posix(value)


def same_rule(a: Zone, b: Zone) -> bool:
    """Whether two zones keep the same clock (names and spelling aside)."""
    return (a.std_offset, a.dst_offset, a.start, a.end) == (b.std_offset, b.dst_offset, b.start, b.end)


def hours_text(seconds: int) -> str:
    """+1, -5, +5:30: an offset as Yealink writes it."""
    sign = "+" if seconds >= 0 else "-"
    hours, rest = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours}" if not rest else f"{sign}{hours}:{rest:02d}"
