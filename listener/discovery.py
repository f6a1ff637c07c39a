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
from dataclasses import dataclass
from typing import Callable

from listener import mac as macs
from listener.ratelimit import RateLimiter
from listener.vendors import identify
from services.expiring import Expiring
from services.messages import Discovered, now_iso
from services.sip.message import (
    Request, SipParseError, SipTooLarge, amplifies, build_response, parse, parse_name_addr,
    parse_value, parse_via, too_many_vias, unsafe_header,
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


@dataclass(frozen=True)
class Outcome:
    """What to do with one datagram. ``verdict`` names the counter it went to."""

    verdict: str
    reply: bytes | None = None
    dest: tuple[str, int] | None = None
    discovered: Discovered | None = None


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
        counters = self.counters
        counters["received"] += 1
        if not self.limiter.allow(source[0], now):
            counters["rate_limited"] += 1
            return Outcome("rate_limited")
        try:
            message = parse(data)
        except SipTooLarge:
            counters["too_large"] += 1
            return Outcome("too_large")
        except SipParseError:
            counters["malformed"] += 1
            return Outcome("malformed")
        if not isinstance(message, Request) or message.method != "SUBSCRIBE":
            counters["ignored"] += 1
            return Outcome("ignored")
        if unsafe_header(message) is not None:
            # its values would go back out in the answer and into the discovery: no answer at all
            counters["unsafe_header"] += 1
            return Outcome("unsafe_header")
        if too_many_vias(message):
            counters["amplifying"] += 1
            return Outcome("amplifying")
        try:
            return self._subscribe(message, source, interface, now, len(data))
        except SipParseError:
            # a header the parser let through but the dialog needs (Via, From, To) is unusable
            counters["malformed"] += 1
            return Outcome("malformed")

    def _subscribe(self, request: Request, source: tuple[str, int], interface: str,
                   now: float, size: int) -> Outcome:
        counters = self.counters
        headers = request.headers
        key = self._transactions.key(request)
        top_via, call_id, cseq_number = key
        dest = reply_address(parse_via(top_via), source)

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
        to_tag = parse_name_addr(to_value).tag or self.to_tag(call_id, from_tag)
        event_value = headers.get("event") or ""
        event, event_params = parse_value(event_value) if event_value else ("", {})

        if event.lower() != EVENT:
            reply = build_response(request, 489, "Bad Event", to_tag=to_tag, received=source,
                                   headers=[("Allow-Events", EVENT)]).to_bytes()
            if amplifies(size, reply):
                counters["amplifying"] += 1
                return Outcome("amplifying")
            self._transactions.answer(key, reply, now)
            counters["bad_event"] += 1
            counters["answered"] += 1
            return Outcome("bad_event", reply, dest)

        mac = macs.from_subscribe(request.uri, from_value)
        if mac is None:
            # Not a phone we could ever provision; another PnP server on the group may know it.
            counters["no_mac"] += 1
            return Outcome("no_mac")

        reply = build_response(
            request, self.status, self.reason, to_tag=to_tag, received=source,
            headers=[("Contact", f"<sip:{interface}:{self.contact_port}>"), ("Expires", "0")],
        ).to_bytes()
        if amplifies(size, reply):
            # not a phone's SUBSCRIBE (theirs carry Event parameters, User-Agent, Accept, ...
            # that the answer does not echo): no answer, and no discovery either
            counters["amplifying"] += 1
            return Outcome("amplifying")
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

        params = {k: v if v is not None else "" for k, v in event_params.items()}
        user_agent = headers.get("user-agent") or ""
        who = identify(params, user_agent, mac)
        discovered = Discovered(
            mac=mac, vendor=who.vendor, model=who.model, firmware=who.firmware,
            ip=source[0], port=dest[1], contact=headers.get("contact") or "",
            user_agent=user_agent, call_id=call_id, from_tag=from_tag, to_tag=to_tag,
            seen_at=self._clock_iso(), cseq=cseq_number, request_uri=request.uri,
            from_uri=from_value, to_uri=to_value, event=params, interface=interface, boot=boot,
        )
        counters["published"] += 1
        return Outcome("answered", reply, dest, discovered)
