"""The listener's protocol core, sans I/O: a datagram in, an answer and maybe a discovery out.

:class:`SubscribeCore` knows nothing of sockets, reactors or MQTT. The caller hands it each
datagram with its source, the local interface it arrived on and the time; it returns what to
send back, where, and the :class:`~services.messages.Discovered` to publish, if any.

What it decides, per RFC 3261 / 3581 / 6665 and the phones in the field:

- a SUBSCRIBE for ``Event: ua-profile`` gets ``200 OK`` (or ``202``) with ``Expires: 0``;
  any other event gets ``489 Bad Event``; other methods, responses and non-SIP are dropped;
- the answer goes to the packet's source address, and to its source port when the top Via
  carries ``rport`` (RFC 3581), else to the Via's sent-by port (RFC 3261 §18.2.2);
- a retransmission (same transaction) gets the identical bytes again;
- the To-tag is a keyed hash of the dialog (Call-ID, From-tag): every SUBSCRIBE of one dialog
  gets the same tag with no per-dialog state, and it is the tag the discovery publishes;
- one discovery per boot: a Call-ID already seen, or a MAC published less than ``window``
  seconds ago from the same IP, only gets its answer. The same MAC from another IP is published
  at once: it is another host claiming that MAC (or the phone moved), and the fileserver's
  enrolment must see both addresses to call it a conflict (docs/SECURITY.md);
- no answer larger than its request (``amplifying``): a source address can be spoofed, so an
  answer is a reflection; a request with more than ``MAX_VIAS`` Vias, or whose answer would
  outgrow it, gets nothing and publishes nothing (services/sip/message.py says why);
- what it remembers is bounded in entries and in bytes (``CACHE_BYTES``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

from listener import mac as macs
from listener.ratelimit import RateLimiter
from listener.vendors import identify
from services.expiring import Expiring
from services.messages import Discovered, now_iso
from services.sip.message import (
    Request, SipParseError, SipTooLarge, amplifies, header_lines, parse, parse_name_addr,
    parse_value, parse_via, response_bytes, too_many_vias, unsafe_header,
)
from services.sip.transaction import ServerTransactions, reply_address

EVENT = "ua-profile"
# How long a Call-ID counts as "this boot already published".
CALL_ID_TTL = 3600.0
# What the remembered answers, Call-IDs and recent MACs may hold together, in bytes (keys and
# values plus ENTRY_OVERHEAD each; PNP_SIP_CACHE_BYTES): a boot storm of 10,000 phones within
# Timer J needs about 10 MiB of answers; the rest is headroom. Half goes to answers, a quarter
# each to the two boot tables. Past it the oldest go first, counted in ``cache_evicted``.
CACHE_BYTES = 64 << 20

COUNTERS = ("received", "answered", "published", "malformed", "too_large", "unsafe_header",
            "rate_limited", "duplicates", "retransmissions", "bad_event", "ignored", "no_mac",
            "amplifying")


def _text_size(key: str, value: str) -> int:
    return len(key) + len(value)


class Sighting:
    """What a new phone's SUBSCRIBE said, kept as read: the facts of its discovery, which is
    built from them (vendor and model named, payload encoded) only after the answer is sent
    and every datagram at hand answered (:meth:`discovered`)."""

    __slots__ = ("mac", "ip", "port", "contact", "user_agent", "call_id", "from_tag", "to_tag",
                 "seen_at", "cseq", "request_uri", "from_uri", "to_uri", "event", "interface",
                 "boot")

    def __init__(self, mac: str, ip: str, port: int, contact: str, user_agent: str,
                 call_id: str, from_tag: str, to_tag: str, seen_at: str, cseq: int,
                 request_uri: str, from_uri: str, to_uri: str,
                 event: dict[str, str | None], interface: str, boot: int) -> None:
        self.mac = mac
        self.ip = ip
        self.port = port
        self.contact = contact
        self.user_agent = user_agent
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.seen_at = seen_at
        self.cseq = cseq
        self.request_uri = request_uri
        self.from_uri = from_uri
        self.to_uri = to_uri
        self.event = event
        self.interface = interface
        self.boot = boot

    def discovered(self) -> Discovered:
        params = {k: v if v is not None else "" for k, v in self.event.items()}
        who = identify(params, self.user_agent, self.mac)
        return Discovered(
            mac=self.mac, vendor=who.vendor, model=who.model, firmware=who.firmware,
            ip=self.ip, port=self.port, contact=self.contact, user_agent=self.user_agent,
            call_id=self.call_id, from_tag=self.from_tag, to_tag=self.to_tag,
            seen_at=self.seen_at, cseq=self.cseq, request_uri=self.request_uri,
            from_uri=self.from_uri, to_uri=self.to_uri, event=params, interface=self.interface,
            boot=self.boot,
        )


class Outcome:
    """What to do with one datagram. ``verdict`` names the counter it went to; ``sighting``,
    of a new phone, is what its discovery is made of (``discovered`` makes it)."""

    __slots__ = ("verdict", "reply", "dest", "sighting", "_discovered")

    def __init__(self, verdict: str, reply: bytes | None = None,
                 dest: tuple[str, int] | None = None, sighting: Sighting | None = None) -> None:
        self.verdict = verdict
        self.reply = reply
        self.dest = dest
        self.sighting = sighting
        self._discovered: Discovered | None = None

    @property
    def discovered(self) -> Discovered | None:
        if self._discovered is None and self.sighting is not None:
            self._discovered = self.sighting.discovered()
        return self._discovered


# Outcomes that carry nothing but their verdict: one each, not one per datagram.
_DROPPED = {verdict: Outcome(verdict) for verdict in (
    "rate_limited", "too_large", "malformed", "ignored", "unsafe_header", "amplifying", "no_mac")}


class SubscribeCore:
    def __init__(
        self,
        status: int = 200,
        window: float = 30.0,
        rate: float = 20.0,
        burst: float = 40.0,
        contact_port: int = 5060,
        secret: bytes | None = None,
        clock_iso: Callable[[], str] = now_iso,
        max_tracked: int = 200_000,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        if status not in (200, 202):
            raise ValueError("status must be 200 or 202")
        self.status = status
        self.reason = "OK" if status == 200 else "Accepted"
        self.window = window
        self.contact_port = contact_port
        self._secret = secret if secret is not None else os.urandom(16)
        self._clock_iso = clock_iso
        self.limiter = RateLimiter(rate, burst)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._transactions = ServerTransactions(max_items=max_tracked, max_bytes=cache_bytes // 2)
        self._call_ids: Expiring[str, str] = Expiring(CALL_ID_TTL, max_tracked, cache_bytes // 4,
                                                      size=_text_size)
        self._recent_macs: Expiring[str, str] = Expiring(window, max_tracked, cache_bytes // 4,
                                                         size=_text_size)
        # MAC -> boots published; an informative count (no consumer decides on it), so past
        # max_tracked MACs the least recently booted one is forgotten and starts again at 1.
        self._boots: dict[str, int] = {}
        self._max_boots = max_tracked
        self._boots_evicted = 0
        self._tails: dict[str, str] = {}
        self._bad_event_tail = header_lines([("Allow-Events", EVENT)])

    # --- state from outside ------------------------------------------------------------------

    def remember(self, mac: str, call_id: str, boot: int, now: float) -> None:
        """What a retained discovery says (after a restart): that boot was published already."""
        if boot > self._boots.get(mac, 0):
            self._set_boot(mac, boot)
        if call_id:
            self._call_ids.put(call_id, mac, now)

    def boots(self, mac: str) -> int:
        """How many boots of ``mac`` were published (as far as this process knows)."""
        return self._boots.get(mac, 0)

    def _set_boot(self, mac: str, boot: int) -> None:
        boots = self._boots
        boots.pop(mac, None)
        boots[mac] = boot
        if len(boots) > self._max_boots:
            del boots[next(iter(boots))]
            self._boots_evicted += 1

    def cache_evicted(self) -> int:
        """Entries the byte or entry bounds pushed out before their time."""
        return (self._transactions.evicted + self._call_ids.evicted + self._recent_macs.evicted
                + self._boots_evicted)

    def cache_bytes(self) -> int:
        return (self._transactions.held_bytes + self._call_ids.held_bytes
                + self._recent_macs.held_bytes)

    def to_tag(self, call_id: str, from_tag: str) -> str:
        digest = hashlib.blake2s(f"{call_id}\0{from_tag}".encode("utf-8", "surrogatepass"),
                                 key=self._secret, digest_size=6)
        return digest.hexdigest()

    # --- the per-packet path -----------------------------------------------------------------

    def handle(self, data: bytes, source: tuple[str, int], interface: str, now: float) -> Outcome:
        """The answer to one datagram, and what a new phone's discovery needs. Only what the
        answer and the boot bookkeeping need is done here: the discovery itself is made later
        (``Outcome.sighting``), after the answer has gone and the datagrams at hand with it."""
        counters = self.counters
        counters["received"] += 1
        if not self.limiter.allow(source[0], now):
            counters["rate_limited"] += 1
            return _DROPPED["rate_limited"]
        try:
            message = parse(data)
        except SipTooLarge:
            counters["too_large"] += 1
            return _DROPPED["too_large"]
        except SipParseError:
            counters["malformed"] += 1
            return _DROPPED["malformed"]
        if not isinstance(message, Request) or message.method != "SUBSCRIBE":
            counters["ignored"] += 1
            return _DROPPED["ignored"]
        if unsafe_header(message) is not None:
            # its values would go back out in the answer and into the discovery: no answer at all
            counters["unsafe_header"] += 1
            return _DROPPED["unsafe_header"]
        vias = message.headers.get_all("via")
        if too_many_vias(message, vias):
            counters["amplifying"] += 1
            return _DROPPED["amplifying"]
        try:
            return self._subscribe(message, vias, source, interface, now, len(data))
        except SipParseError:
            # a header the parser let through but the dialog needs (Via, From, To) is unusable
            counters["malformed"] += 1
            return _DROPPED["malformed"]

    def _tail(self, interface: str) -> str:
        """The answer's own headers on ``interface``: the same for every phone, made once."""
        tail = self._tails.get(interface)
        if tail is None:
            tail = self._tails[interface] = header_lines(
                [("Contact", f"<sip:{interface}:{self.contact_port}>"), ("Expires", "0")])
        return tail

    def _subscribe(self, request: Request, vias: list[str], source: tuple[str, int],
                   interface: str, now: float, size: int) -> Outcome:
        counters = self.counters
        headers = request.headers
        key = self._transactions.key(request)
        top_via, call_id, cseq_number = key
        via = parse_via(top_via)
        dest = reply_address(via, source)

        cached = self._transactions.answered(key, now)
        if cached is not None:
            counters["retransmissions"] += 1
            counters["answered"] += 1
            return Outcome("retransmissions", cached, dest)

        from_value = headers.get("from") or ""
        from_tag = parse_name_addr(from_value).tag or ""
        to_value = headers.get("to") or ""
        # A To we cannot parse is not a dialog we can answer; a To that has a tag already
        # (a refresh inside a dialog) keeps it, and that is the dialog's tag to publish.
        to_own = parse_name_addr(to_value).tag
        to_tag = to_own or self.to_tag(call_id, from_tag)
        event_value = headers.get("event") or ""
        # Parsed whole before answering: Event parameters we could not read are a malformed
        # request, not a phone (and the discovery publishes them).
        event, event_params = parse_value(event_value) if event_value else ("", {})
        # the answer copies what was parsed above rather than parsing it again
        top = via if vias and vias[0] == top_via else None

        if event.lower() != EVENT:
            reply = response_bytes(request, 489, "Bad Event", to_tag, source,
                                   self._bad_event_tail, vias=vias, top=top,
                                   to_tagged=to_own is not None)
            if amplifies(size, reply):
                counters["amplifying"] += 1
                return _DROPPED["amplifying"]
            self._transactions.answer(key, reply, now)
            counters["bad_event"] += 1
            counters["answered"] += 1
            return Outcome("bad_event", reply, dest)

        mac = macs.from_subscribe(request.uri, from_value)
        if mac is None:
            # Not a phone we could ever provision; another PnP server on the group may know it.
            counters["no_mac"] += 1
            return _DROPPED["no_mac"]

        reply = response_bytes(request, self.status, self.reason, to_tag, source,
                               self._tail(interface), vias=vias, top=top,
                               to_tagged=to_own is not None)
        if amplifies(size, reply):
            # not a phone's SUBSCRIBE (theirs carry Event parameters, User-Agent, Accept, ...
            # that the answer does not echo): no answer, and no discovery either
            counters["amplifying"] += 1
            return _DROPPED["amplifying"]
        self._transactions.answer(key, reply, now)
        counters["answered"] += 1

        if self._call_ids.get(call_id, now) is not None or self._recent_macs.get(mac, now) == source[0]:
            self._call_ids.put(call_id, mac, now)
            counters["duplicates"] += 1
            return Outcome("duplicates", reply, dest)
        self._call_ids.put(call_id, mac, now)
        self._recent_macs.put(mac, source[0], now)  # the IP: a boot is one host's
        boot = self._boots.get(mac, 0) + 1
        self._set_boot(mac, boot)

        sighting = Sighting(
            mac, source[0], dest[1], headers.get("contact") or "",
            headers.get("user-agent") or "", call_id, from_tag, to_tag, self._clock_iso(),
            cseq_number, request.uri, from_value, to_value, event_params, interface, boot)
        counters["published"] += 1
        return Outcome("answered", reply, dest, sighting)
