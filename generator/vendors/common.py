"""What every vendor family needs from an assignment: defaults filled, model limits checked,
server locations split, time zones as POSIX strings."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from generator.vendors import RenderProblem, Target

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


def accounts(a: dict, target: Target) -> list[dict]:
    """Accounts with every field present (defaults filled), after checking the model has room."""
    items = a.get("accounts", [])
    if len(items) > target.info.accounts:
        raise RenderProblem(
            "model_limit",
            f"{target.model} has {target.info.accounts} SIP account(s); accounts[{target.info.accounts}] "
            f"is account {target.info.accounts + 1}", f"accounts[{target.info.accounts}]")
    out = []
    for i, acc in enumerate(items):
        transport = acc.get("transport", "udp")
        out.append({
            "number": i + 1,
            "enabled": acc.get("enabled", True),
            "sip_server": acc["sip_server"],
            # JSON Schema counts 5060.0 as an integer; the file must say 5060
            "port": int(acc.get("port", DEFAULT_PORTS[transport])),
            "transport": transport,
            "user_id": acc["user_id"],
            "auth_id": acc.get("auth_id") or acc["user_id"],
            "password": acc.get("password", ""),
            "display_name": acc.get("display_name", ""),
            "label": acc.get("label") or acc.get("display_name") or acc["user_id"],
            "outbound_proxy": acc.get("outbound_proxy", ""),
        })
    return out


def keys(a: dict, target: Target, supported: set[str] | None = None) -> list[dict]:
    """Keys numbered from 1, after checking the model has that many and the accounts exist."""
    items = a.get("keys", [])
    if len(items) > target.info.keys:
        raise RenderProblem(
            "model_limit",
            f"{target.model} has {target.info.keys} programmable keys; keys[{target.info.keys}] is key "
            f"{target.info.keys + 1}", f"keys[{target.info.keys}]")
    count = len(a.get("accounts", []))
    out = []
    for i, key in enumerate(items):
        account = int(key.get("account", 1))
        if account > count:
            raise RenderProblem("schema", f"keys[{i}].account is {account}, but the assignment has "
                                f"{count} account(s)", f"keys[{i}].account")
        if supported is not None and key["type"] not in supported:
            allowed = ", ".join(sorted(supported))
            raise RenderProblem("unsupported", f"keys[{i}].type {key['type']!r} is not available on "
                                f"{target.vendor} {target.model} (available: {allowed})", f"keys[{i}].type")
        out.append({"number": i + 1, "type": key["type"], "value": key.get("value", ""),
                    "label": key.get("label", ""), "account": account})
    return out


_SCHEME = re.compile(r"^([a-z]+)://", re.I)


def location(text: str, protocol: str | None) -> tuple[str, str]:
    """(protocol, host/path) from ``https://h/p`` or ``h/p`` plus a protocol (default http)."""
    m = _SCHEME.match(text)
    if m:
        return (protocol or m.group(1).lower()), text[m.end():]
    return (protocol or "http"), text


def check_interval(prov: dict) -> int | None:
    return int(prov["check_interval"]) if "check_interval" in prov else None


def protocol_of(prov: dict) -> str | None:
    """The provisioning protocol: as given, else the scheme of the config (or firmware) server."""
    if prov.get("protocol"):
        return prov["protocol"]
    for name in ("config_server", "firmware_server"):
        m = _SCHEME.match(prov.get(name, ""))
        if m:
            return m.group(1).lower()
    return None


def url(text: str, protocol: str | None) -> str:
    scheme, rest = location(text, protocol)
    return f"{scheme}://{rest}"


_POSIX = re.compile(r"^[A-Za-z<>+\-0-9]{3,}[+-]?[0-9]{1,2}(:[0-9]{2}){0,2}([A-Za-z<>+\-0-9]{3,}.*)?$")


@functools.lru_cache(maxsize=512)
def posix_tz(value: str) -> str:
    """A POSIX TZ string for an IANA name (from the system's tzdata footer) or the string itself."""
    if "/" in value or value in ("UTC", "GMT"):
        for base in ("/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo"):
            path = Path(base) / value
            try:
                if path.resolve().is_relative_to(Path(base).resolve()) and path.is_file():
                    footer = path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("ascii")
                    if footer:
                        return footer
            except (OSError, UnicodeDecodeError, ValueError):
                continue
        raise RenderProblem("schema", f"time_zone {value!r} is not a known time zone name", "time_zone")
    if _POSIX.match(value):
        return value
    raise RenderProblem("schema", f"time_zone {value!r} is neither a time zone name (Europe/Berlin) "
                        "nor a POSIX TZ string (CET-1CEST,M3.5.0,M10.5.0/3)", "time_zone")


_OFFSET = re.compile(r"^(?:<[^>]+>|[A-Za-z]+)([+-]?)([0-9]{1,2})(?::([0-9]{2}))?")


def utc_offset_minutes(posix: str) -> int:
    """Standard-time offset east of UTC (POSIX writes it west: CET-1 is UTC+1)."""
    m = _OFFSET.match(posix)
    if not m:
        return 0
    minutes = int(m.group(2)) * 60 + int(m.group(3) or 0)
    return minutes if m.group(1) == "-" else -minutes


def raw_settings(a: dict, vendor: str) -> list[tuple[str, str]]:
    """The assignment's pass-through settings for this vendor, in name order."""
    raw = a.get("vendor_settings", {}).get(vendor, {})
    return [(name, text(value)) for name, value in sorted(raw.items())]


def text(value: Any) -> str:
    """A setting's value as the file writes it (true/false as 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
