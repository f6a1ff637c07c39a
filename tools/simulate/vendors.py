"""What each simulated vendor looks like on the wire: one table, one entry per vendor.

The SUBSCRIBE shapes follow published captures, quirks included, because a listener that only
copes with tidy messages fails in the field:

- Grandstream: the GRP26xx Plug and Play guide's capture (``MAC%3A`` + upper-case MAC, port 5080,
  ``rport``, CSeq 20000, ``X-Grandstream-PBX``, the Call-ID with the IP written in letters).
- Yealink: the bare ``MAC`` + lower-case MAC user part, sent from port 5059.
- snom: snom's own sample trace: ``MAC%3a`` (lower-case escape) + upper-case MAC at snom's domain,
  a Via with ``rport`` and *no branch*, no User-Agent, and ``vendor="OEM"`` in the Event header
  (the model says ``snomD785``).
- Fanvil: the Fanvil-family manual's shape: ``MAC=`` + lower-case MAC and a From without a tag.

What the phone fetches: when the NOTIFY URL ends in ``/`` the phone appends its vendor's file
names; otherwise the URL is the file itself. The User-Agent of the HTTP requests is the one the
vendor's firmware sends (Grandstream's carries ``DevId <mac>``, Yealink's the colon MAC).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from services.sip.message import Headers, Request

GROUP = "224.0.1.75"


@dataclass(frozen=True)
class Identity:
    """One simulated phone: who it is and where it lives."""

    vendor: "Vendor"
    model: str
    firmware: str
    mac: str  # 12 lower-case hex digits
    ip: str
    port: int


@dataclass(frozen=True)
class Vendor:
    name: str  # as assignments and topics name it (lower case)
    oui: str  # first six hex digits of its MACs
    sip_port: int  # the port its SIP stack binds
    models: dict[str, str]  # model -> firmware
    files: tuple[str, ...]  # appended to a directory URL; {mac} is the lower-case MAC
    user_agent: Callable[[Identity], str]  # HTTP User-Agent
    subscribe: Callable[[Identity, "Dialog", int, str], Request] = field(repr=False)


@dataclass
class Dialog:
    """The identifiers a phone keeps for one boot's SUBSCRIBEs."""

    call_id: str
    from_tag: str | None
    first_cseq: int


def _digits(rng: random.Random, n: int = 10) -> str:
    return str(rng.randrange(10 ** (n - 1), 10 ** n))


def _gs_call_id_host(ip: str) -> str:
    # Grandstream writes its IP with letters for digits: 192.168.5.175 -> BJC.BGI.F.BHF.
    return ".".join("".join(chr(ord("A") + int(d)) for d in part) for part in ip.split("."))


def new_dialog(vendor: Vendor, ident: Identity, rng: random.Random) -> Dialog:
    if vendor.name == "grandstream":
        return Dialog(f"{_digits(rng)}-{ident.port}-1@{_gs_call_id_host(ident.ip)}", _digits(rng), 20000)
    if vendor.name == "snom":
        return Dialog(f"{_digits(rng)}@{ident.ip}", _digits(rng, 9), 1)
    if vendor.name == "fanvil":
        return Dialog(f"{_digits(rng, 15)}-{_digits(rng, 15)}@{ident.ip}", None, 1)
    return Dialog(f"{_digits(rng)}@{ident.ip}", _digits(rng), 1)


def _event(vendor: str, model: str, version: str) -> str:
    return f'ua-profile;profile-type="device";vendor="{vendor}";model="{model}";version="{version}"'


def _from(uri: str, tag: str | None) -> str:
    return f"<{uri}>;tag={tag}" if tag else f"<{uri}>"


def _grandstream(p: Identity, d: Dialog, attempt: int, branch: str) -> Request:
    uri = f"sip:MAC%3A{p.mac.upper()}@{GROUP}"
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP {p.ip}:{p.port};branch={branch};rport")
    h.add("From", _from(uri, d.from_tag))
    h.add("To", f"<{uri}>")
    h.add("Call-ID", d.call_id)
    h.add("CSeq", f"{d.first_cseq + attempt} SUBSCRIBE")
    h.add("Contact", f"<sip:{p.ip}:{p.port}>")
    h.add("X-Grandstream-PBX", "true")
    h.add("Max-Forwards", "70")
    h.add("User-Agent", f"Grandstream {p.model} {p.firmware}")
    h.add("Expires", "0")
    h.add("Supported", "replaces, path")
    h.add("Event", _event("Grandstream", p.model, p.firmware))
    h.add("Accept", "application/url")
    h.add("Allow", "INVITE, ACK, OPTIONS, CANCEL, BYE, SUBSCRIBE, NOTIFY, INFO, REFER, UPDATE, MESSAGE")
    return Request("SUBSCRIBE", uri, h)


def _yealink(p: Identity, d: Dialog, attempt: int, branch: str) -> Request:
    uri = f"sip:MAC{p.mac}@{GROUP}"
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP {p.ip}:{p.port};branch={branch}")
    h.add("From", _from(uri, d.from_tag))
    h.add("To", f"<{uri}>")
    h.add("Call-ID", d.call_id)
    h.add("CSeq", f"{d.first_cseq + attempt} SUBSCRIBE")
    h.add("Contact", f"<sip:{p.ip}:{p.port}>")
    h.add("Accept", "application/url")
    h.add("Max-Forwards", "70")
    h.add("User-Agent", f"Yealink SIP-{p.model} {p.firmware}")
    h.add("Expires", "0")
    h.add("Event", _event("Yealink", p.model, p.firmware))
    return Request("SUBSCRIBE", uri, h)


def _snom(p: Identity, d: Dialog, attempt: int, branch: str) -> Request:
    uri = f"sip:MAC%3a{p.mac.upper()}@intern.snom.de"
    h = Headers()
    # No branch: snom's PnP SUBSCRIBE carries an RFC 2543-style Via.
    h.add("Via", f"SIP/2.0/UDP {p.ip}:{p.port};rport")
    h.add("From", _from(uri, d.from_tag))
    h.add("To", f"<{uri}>")
    h.add("Call-ID", d.call_id)
    h.add("CSeq", f"{d.first_cseq + attempt} SUBSCRIBE")
    h.add("Event", _event("OEM", f"snom{p.model}", p.firmware))
    h.add("Expires", "0")
    h.add("Accept", "application/url")
    h.add("Contact", f"<sip:{p.ip}:{p.port}>")
    return Request("SUBSCRIBE", uri, h)


def _fanvil(p: Identity, d: Dialog, attempt: int, branch: str) -> Request:
    uri = f"sip:MAC={p.mac}@{GROUP}"
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP {p.ip}:{p.port};branch={branch}")
    h.add("From", _from(uri, d.from_tag))
    h.add("To", f"<{uri}>")
    h.add("Call-ID", d.call_id)
    h.add("CSeq", f"{d.first_cseq + attempt} SUBSCRIBE")
    h.add("Contact", f"<sip:{p.ip}:{p.port}>")
    h.add("Max-Forwards", "70")
    h.add("User-Agent", f"Fanvil {p.model} {p.firmware}")
    h.add("Expires", "0")
    h.add("Event", _event("Fanvil", p.model, p.firmware))
    h.add("Accept", "application/url")
    return Request("SUBSCRIBE", uri, h)


def _colon_mac(mac: str) -> str:
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2))


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor(
        "grandstream", "000b82", 5080,
        {"GRP2614": "1.0.0.31", "GRP2612": "1.0.0.31", "GRP2613": "1.0.0.31", "GRP2615": "1.0.0.31",
         "GRP2616": "1.0.0.31", "GRP2601": "1.0.1.18", "GRP2602": "1.0.1.18", "GRP2603": "1.0.1.18",
         "GRP2604": "1.0.1.18", "GRP2624": "1.0.5.48", "GRP2634": "1.0.5.48"},
        ("cfg{mac}.xml",),
        lambda p: f"Grandstream Model HW {p.model} SW {p.firmware} DevId {p.mac}",
        _grandstream,
    ),
    Vendor(
        "yealink", "001565", 5059,
        {"T46S": "66.86.0.15", "T48S": "66.86.0.15", "T54W": "96.86.0.70", "T57W": "97.86.0.70",
         "T33G": "124.86.0.40"},
        ("{mac}.cfg",),
        lambda p: f"Yealink SIP-{p.model} {p.firmware} {_colon_mac(p.mac)}",
        _yealink,
    ),
    Vendor(
        "snom", "000413", 5060,
        {"D785": "10.1.46.16", "D735": "10.1.46.16", "D717": "10.1.46.16"},
        ("{mac}.xml",),
        lambda p: f"Mozilla/4.0 (compatible; snom{p.model}-SIP {p.firmware} {p.mac.upper()})",
        _snom,
    ),
    Vendor(
        "fanvil", "0c383e", 5060,
        {"X4U": "2.10.2.6887", "X6U": "2.10.2.6887"},
        ("{mac}.cfg",),
        lambda p: f"Fanvil {p.model} {p.firmware} {p.mac}",
        _fanvil,
    ),
)}


class UnknownModel(ValueError):
    pass


def find_model(name: str) -> tuple[Vendor, str]:
    """(vendor, model) for a model name (``GRP2614``, ``t46s``, ``snomD785``) or a vendor name
    (its first model). Raises UnknownModel naming what is known."""
    wanted = name.strip().lower()
    if wanted in VENDORS:
        vendor = VENDORS[wanted]
        return vendor, next(iter(vendor.models))
    for vendor in VENDORS.values():
        for model in vendor.models:
            if wanted in (model.lower(), f"{vendor.name}{model}".lower(), f"sip-{model}".lower()):
                return vendor, model
    known = ", ".join(m for v in VENDORS.values() for m in v.models)
    raise UnknownModel(f"unknown model {name!r}; known: {known} (or a vendor name: {', '.join(VENDORS)})")


def file_names(vendor: Vendor, mac: str) -> list[str]:
    return [f.format(mac=mac) for f in vendor.files]
