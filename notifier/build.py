"""The NOTIFY requests, built with the shared SIP core, and where they go.

In-dialog (RFC 6665 §4.2.2, what snom's and Yealink's Plug and Play expect): the NOTIFY belongs
to the dialog the SUBSCRIBE created, so it carries the SUBSCRIBE's Call-ID, its From (with the
phone's tag) as To and its To (with the tag our listener answered with) as From, and goes to
the phone's Contact. Out-of-dialog (the guide's capture of a UCM): a fresh Call-ID, our own
From tag and an untagged To, for firmware that wants that. A resync (``check-sync``) is always
out-of-dialog: the phone's Plug and Play subscription ended long ago.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services import __version__
from services.messages import Discovered
from services.sip.message import (
    Headers, NameAddr, Request, SipParseError, SipUri, new_branch, new_call_id, new_tag,
    parse_name_addr, parse_uri,
)

from notifier.settings import IN_DIALOG

USER_AGENT = f"pnp-notifier/{__version__}"
DEFAULT_SIP_PORT = 5060


class BuildError(ValueError):
    """The discovery lacks what a NOTIFY needs; the message says what."""


@dataclass(frozen=True)
class Local:
    """Where our NOTIFY socket is: Via and Contact name it, so the 200 OK comes back there."""

    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """Where a NOTIFY to a discovered phone goes: its Request-URI and the datagram's address."""

    uri: str
    address: tuple[str, int]


def _contact(discovered: Discovered) -> tuple[str, SipUri]:
    try:
        uri = parse_name_addr(discovered.contact).uri
        return uri, parse_uri(uri)
    except SipParseError as exc:
        raise BuildError(f"unusable Contact {discovered.contact!r}: {exc}") from None


def contact_uri(discovered: Discovered) -> str:
    """The phone's Contact URI (the remote target), or BuildError."""
    return _contact(discovered)[0]


def target(discovered: Discovered) -> Target:
    """The Request-URI and :func:`destination` of a NOTIFY, from one reading of the Contact
    (a NOTIFY has both; reading it once for each was a tenth of a NOTIFY's CPU). BuildError
    when the Contact is unusable: no NOTIFY can be addressed then, whatever the source."""
    uri, contact = _contact(discovered)
    return Target(uri, _destination(discovered, contact, ""))


def destination(discovered: Discovered) -> tuple[str, int]:
    """Where the NOTIFY datagram goes.

    The Contact says where the phone listens; the packet's source says where it really is. When
    the Contact's host is the source address, the phone speaks for itself: use the Contact's
    port (a phone may send from another port than it listens on). When they differ (a NAT
    rewrote the source, or the Contact names a host we cannot resolve here), the Contact is
    unreachable from us and only the observed address and port are: use those, as RFC 3581
    does for responses.
    """
    contact: SipUri | None
    problem = ""
    try:
        contact = _contact(discovered)[1]
    except BuildError as exc:
        contact, problem = None, f"{exc}; "
    return _destination(discovered, contact, problem)


def _destination(discovered: Discovered, contact: SipUri | None, problem: str) -> tuple[str, int]:
    source_ok = _is_ipv4(discovered.ip) and 0 < discovered.port < 65536
    if contact is not None and (contact.host == discovered.ip or not source_ok):
        if not _is_ipv4(contact.host):
            raise BuildError(f"Contact host {contact.host!r} is not an IPv4 address")
        return contact.host, contact.port or DEFAULT_SIP_PORT
    if not source_ok:
        raise BuildError(f"{problem}no usable source address either: ip {discovered.ip!r}, "
                         f"port {discovered.port!r}")
    return discovered.ip, discovered.port


# What ipaddress.IPv4Address accepts (four ASCII decimal octets, no leading zeros), at a
# twentieth of its cost: asked twice per NOTIFY.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _is_ipv4(text: str) -> bool:
    return _IPV4.fullmatch(text) is not None


def _dialog_party(value: str, tag: str, fallback_uri: str) -> NameAddr:
    """A From/To of the SUBSCRIBE, as the phone wrote it, with ``tag`` when it lacks one."""
    try:
        party = parse_name_addr(value) if value else NameAddr("", fallback_uri, {})
    except SipParseError:
        party = NameAddr("", fallback_uri, {})
    if party.tag is None and tag:
        party = party.with_tag(tag)
    return party


def _common(headers: Headers, local: Local, branch: str) -> None:
    headers.add("Via", f"SIP/2.0/UDP {local.host}:{local.port};branch={branch};rport")


def ua_profile(discovered: Discovered, url: str, local: Local, mode: str, cseq: int,
               branch: str | None = None, uri: str | None = None) -> Request:
    """The Plug and Play NOTIFY carrying the URL of the phone's files; ``uri``: its
    :class:`Target`'s, when the caller has it."""
    target = uri or contact_uri(discovered)
    branch = branch or new_branch()
    h = Headers()
    _common(h, local, branch)
    if mode == IN_DIALOG:
        # A phone's From without a tag (Fanvil's PnP SUBSCRIBE) is RFC 2543 style: its dialog's
        # remote tag is null (RFC 3261 §12.1.2), so our To carries none. Our tag must exist.
        if not discovered.call_id or not discovered.to_tag:
            raise BuildError("an in-dialog NOTIFY needs the SUBSCRIBE's Call-ID and our To-tag")
        fallback = discovered.request_uri or target
        ours = _dialog_party(discovered.to_uri, discovered.to_tag, fallback)
        theirs = _dialog_party(discovered.from_uri, discovered.from_tag, fallback)
        if ours.tag != discovered.to_tag:
            # The phone's To never carries our tag; the listener's answer did.
            ours = ours.with_tag(discovered.to_tag)
        h.add("From", str(ours))
        h.add("To", str(theirs))
        h.add("Call-ID", discovered.call_id)
    else:
        h.add("From", str(NameAddr("", f"sip:{local.host}:{local.port}", {"tag": new_tag()})))
        h.add("To", str(NameAddr("", target, {})))
        h.add("Call-ID", new_call_id(local.host))
        cseq = 1
    h.add("CSeq", f"{cseq} NOTIFY")
    h.add("Contact", f"<sip:{local.host}:{local.port}>")
    h.add("Max-Forwards", "70")
    h.add("User-Agent", USER_AGENT)
    h.add("Event", "ua-profile")
    h.add("Subscription-State", "terminated;reason=timeout")
    h.add("Content-Type", "application/url")
    return Request("NOTIFY", target, h, url.encode("utf-8"))


def check_sync(discovered: Discovered, local: Local, reboot: bool, branch: str | None = None,
               uri: str | None = None) -> Request:
    """The vendors' resync NOTIFY: fetch your config again (and reboot, if asked)."""
    target = uri or contact_uri(discovered)
    h = Headers()
    _common(h, local, branch or new_branch())
    h.add("From", str(NameAddr("", f"sip:{local.host}:{local.port}", {"tag": new_tag()})))
    h.add("To", str(NameAddr("", target, {})))
    h.add("Call-ID", new_call_id(local.host))
    h.add("CSeq", "1 NOTIFY")
    h.add("Contact", f"<sip:{local.host}:{local.port}>")
    h.add("Max-Forwards", "70")
    h.add("User-Agent", USER_AGENT)
    h.add("Event", f"check-sync;reboot={'true' if reboot else 'false'}")
    # RFC 6665 wants it in every NOTIFY; firmware that does not care ignores it.
    h.add("Subscription-State", "terminated")
    return Request("NOTIFY", target, h, b"")
