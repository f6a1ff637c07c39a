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
names (a Yealink its model's common file ``y000000000xxx.cfg``, then ``{mac}.cfg``); otherwise
the URL is the file itself. The User-Agent of the HTTP requests is the one the vendor's firmware
sends (Grandstream's carries ``DevId <mac>``, Yealink's the colon MAC).

How a phone reads a file (:func:`check_file`), from the vendor facts in
``generator/vendors/<vendor>/record.py``: a GRP applies ``<gs_provision>`` P-values and refuses a
file with a P-value or value its template does not document (an MPK mode out of range, say); a
Yealink wants the ``#!version:1.0.0.1`` line, ``key = value`` lines and, for a common file, the
name its model reads; a snom refuses a ``setting_server`` that is not the URL of a file; a Fanvil
wants a ``<sysConf>`` document. Every parser returns the (setting, value) pairs it applied.

Where a phone fetches after Plug and Play (:func:`config_server`): the configuration server and
HTTP user/password its files set, each vendor's own settings (Grandstream P237/P212/P1360/P1361,
Yealink ``static.auto_provision.server.*``, snom ``setting_server`` + ``http_client_user/pass``,
Fanvil ``<ap>`` FlashServerIP/FlashFileName + DefaultUsername/DefaultPassword).
"""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
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
         "GRP2616": "1.0.0.31"},
        ("cfg{mac}.xml",),
        lambda p: f"Grandstream Model HW {p.model} SW {p.firmware} DevId {p.mac}",
        _grandstream,
    ),
    Vendor(
        "yealink", "001565", 5059,
        {"T46S": "66.86.0.15", "T48S": "66.86.0.15", "T54W": "96.86.0.70", "T57W": "97.86.0.70",
         "T33G": "124.86.0.40"},
        ("y000000000{hw}.cfg", "{mac}.cfg"),
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


def _hw(vendor: Vendor, model: str) -> str:
    from generator.vendors import RECORDS

    info = RECORDS[vendor.name].models.get(model)
    return f"{info.extra['hw']:03d}" if info is not None and "hw" in info.extra else "000"


def file_names(vendor: Vendor, mac: str, model: str = "") -> list[str]:
    """The files a phone fetches from a directory URL, in order."""
    hw = _hw(vendor, model) if vendor.name == "yealink" else ""
    return [f.format(mac=mac, hw=hw) for f in vendor.files]


class FileRefused(ValueError):
    """What a phone's firmware would refuse in a file, worded for the run's report."""


def check_file(vendor: Vendor, model: str, mac: str, name: str, body: bytes,
               known: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The (setting, value) pairs the phone applies from one file; FileRefused when it would not.

    A simulated GRP knows the P-values of its record (the ones checked against Grandstream's
    template) plus ``known`` (say, an assignment's ``vendor_settings``): a real one knows its whole
    template, which this project does not carry."""
    parse = _PARSERS[vendor.name]
    pairs = parse(vendor, model, mac, name, body)
    from generator.vendors import RECORDS

    if vendor.name == "grandstream":
        # The GRP applies P-values from its own template only, each within its documented range.
        problems = RECORDS["grandstream"].problems([(k, v) for k, v in pairs if k not in known])
        if problems:
            raise FileRefused(problems[0])
    return pairs


def _xml(body: bytes, root: str) -> ET.Element:
    try:
        doc = ET.fromstring(body)
    except ET.ParseError as exc:
        raise FileRefused(f"not well-formed XML: {exc}") from None
    if doc.tag != root:
        raise FileRefused(f"root element <{doc.tag}>, not <{root}>")
    return doc


def parse_grandstream(vendor: Vendor, model: str, mac: str, name: str, body: bytes) -> list[tuple[str, str]]:
    doc = _xml(body, "gs_provision")
    if doc.get("version") != "1":
        raise FileRefused("<gs_provision> without version=\"1\"")
    if (doc.findtext("mac") or "").lower() != mac:
        raise FileRefused(f"<mac> is {doc.findtext('mac')!r}, not this phone's {mac}")
    config = doc.find("config")
    if config is None:
        raise FileRefused("no <config> element")
    return [(child.tag, child.text or "") for child in config]


_YEALINK_LINE = re.compile(r"^([A-Za-z0-9_.]+)\s*=\s?(.*)$")


def parse_yealink(vendor: Vendor, model: str, mac: str, name: str, body: bytes) -> list[tuple[str, str]]:
    if name.startswith("y0") and name != file_names(vendor, mac, model)[0]:
        raise FileRefused(f"{name} is not the common file a {model} reads ({file_names(vendor, mac, model)[0]})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused("not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "#!version:1.0.0.1":
        raise FileRefused("the first line is not #!version:1.0.0.1")
    pairs = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _YEALINK_LINE.match(line)
        if not m:
            raise FileRefused(f"line {number} is not key = value: {line[:60]!r}")
        pairs.append((m.group(1), m.group(2)))
    return pairs


def parse_snom(vendor: Vendor, model: str, mac: str, name: str, body: bytes) -> list[tuple[str, str]]:
    doc = _xml(body, "settings")
    pairs = []
    for section in doc:
        if section.tag == "phone-settings":
            pairs += [(child.tag, child.text or "") for child in section]
        elif section.tag == "functionKeys":
            for key in section:
                pairs += [("fkey", key.text or ""), ("fkey@context", key.get("context", "")),
                          ("fkey@label", key.get("label", ""))]
    for setting, value in pairs:
        if setting == "setting_server" and (not re.match(r"^(?:https?|tftp|ftp)://", value) or value.endswith("/")):
            raise FileRefused(f"setting_server {value!r} is not the URL of a settings file")
    return pairs


def parse_fanvil(vendor: Vendor, model: str, mac: str, name: str, body: bytes) -> list[tuple[str, str]]:
    doc = _xml(body, "sysConf")
    pairs: list[tuple[str, str]] = []

    def walk(node: ET.Element, path: str) -> None:
        for child in node:
            where = f"{path}/{child.tag}" if path else child.tag
            if len(child):
                walk(child, where)
            else:
                pairs.append((where, child.text or ""))

    walk(doc, "")
    return [(k, v) for k, v in pairs if k != "Version"]


_PARSERS = {"grandstream": parse_grandstream, "yealink": parse_yealink, "snom": parse_snom,
            "fanvil": parse_fanvil}


def read_file(vendor: Vendor, model: str, mac: str, name: str, body: bytes) -> list[tuple[str, str]]:
    """The (setting, value) pairs of a file, without judging them (FileRefused only when it
    cannot be read at all)."""
    return _PARSERS[vendor.name](vendor, model, mac, name, body)


@dataclass(frozen=True)
class ServerLogin:
    """Where a phone's files say to fetch them from after Plug and Play, and as whom."""

    urls: tuple[str, ...]  # the files it fetches from there, in order
    user: str
    password: str


_GS_SCHEME = {"1": "http", "2": "https"}  # P212; TFTP and FTP(S) are not simulated
_FANVIL_SCHEME = {"4": "http", "5": "https"}  # FlashProtocol


def config_server(vendor: Vendor, model: str, mac: str, pairs: list[tuple[str, str]]) -> ServerLogin | None:
    """The configuration server and HTTP credentials the settings a phone applied (in the order
    it applied them: a later file wins) point it at, read with the vendor's own settings as its
    firmware would (generator/vendors/<vendor>/record.py names their sources); None when they
    name none it can use."""
    s = dict(pairs)
    if vendor.name == "grandstream":
        path, scheme = s.get("P237", "").strip(), _GS_SCHEME.get(s.get("P212", "1"))
        if not path or scheme is None:
            return None
        base = f"{scheme}://{path.rstrip('/')}/"
        return ServerLogin(tuple(base + n for n in file_names(vendor, mac, model)), s.get("P1360", ""),
                           s.get("P1361", ""))
    if vendor.name == "yealink":
        url = s.get("static.auto_provision.server.url", "").strip()
        if not re.match(r"^https?://", url):
            return None
        base = url if url.endswith("/") else url + "/"
        return ServerLogin(tuple(base + n for n in file_names(vendor, mac, model)),
                           s.get("static.auto_provision.server.username", ""),
                           s.get("static.auto_provision.server.password", ""))
    if vendor.name == "snom":
        url = s.get("setting_server", "").strip()
        if not re.match(r"^https?://", url):
            return None
        return ServerLogin((url,), s.get("http_client_user", ""), s.get("http_client_pass", ""))
    if vendor.name == "fanvil":
        server = s.get("ap/FlashServerIP", "").strip()
        if not server:
            return None
        if not re.match(r"^https?://", server):
            scheme = _FANVIL_SCHEME.get(s.get("ap/FlashProtocol", "4"))
            if scheme is None:
                return None
            server = f"{scheme}://{server}"
        name = s.get("ap/FlashFileName", "$mac.cfg").replace("$mac", mac)
        return ServerLogin((f"{server.rstrip('/')}/{name.lstrip('/')}",), s.get("ap/DefaultUsername", ""),
                           s.get("ap/DefaultPassword", ""))
    return None
