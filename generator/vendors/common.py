"""What every vendor family needs from an assignment: defaults filled, model limits checked,
server locations split, settings checked against the family's record."""

from __future__ import annotations

import re
from collections.abc import Set
from typing import TYPE_CHECKING, Any

from markupsafe import escape

from generator.vendors import RenderProblem, Target

if TYPE_CHECKING:
    from generator.vendors.record import Record

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


def checked(record: "Record", settings: list[tuple[str, str]], raw: Set[str] = frozenset()) -> None:
    """Refuse to write a setting the family's record does not document, or a value it does not
    allow (``raw``: names from ``vendor_settings``, written as given)."""
    found = record.problems([(n, v) for n, v in settings if n not in raw])
    if found:
        raise RenderProblem("unsupported", f"{record.vendor}: {found[0]}")


def raw_settings(a: dict, vendor: str) -> list[tuple[str, str]]:
    """The assignment's pass-through settings for this vendor, in name order."""
    raw = a.get("vendor_settings", {}).get(vendor, {})
    return [(name, text(value)) for name, value in sorted(raw.items())]


def text(value: Any) -> str:
    """A setting's value as the file writes it (true/false as 1/0)."""
    if type(value) is str:  # most of them, a few hundred per file
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_XML_SPECIAL = re.compile(r"[&<>\"']")


def xml_text(value: str) -> str:
    """A value escaped exactly as the templates' autoescape writes it (``"`` as ``&#34;``)."""
    return str(escape(value)) if _XML_SPECIAL.search(value) else value
