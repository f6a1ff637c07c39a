"""The thin Twisted side of the NOTIFY: one UDP socket per local address, feeding datagrams and
time to a :class:`~services.sip.transaction.TransactionTable`.

One timer per socket, armed for the table's earliest deadline, however many transactions run.
The clock is any IReactorTime, so tests drive real sockets with a ``task.Clock``.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from services.sip.message import Request, Response, SipParseError, parse, parse_via
from services.sip.transaction import (
    Action, Event, Key, Result, Timers, TransactionTable, response_key,
)

log = Logger(namespace="notifier")

RECEIVE_BUFFER = 4 << 20  # asked for; the kernel caps it at net.core.rmem_max

@dataclass(frozen=True)
class Answer:
    """The final response (a 401/407's challenge is in it) and where it came from."""

    response: Response
    source: tuple[str, int]


# The result, and the final answer when there was one (None on a timeout).
OnResult = Callable[[Result, "Answer | None"], Any]


@dataclass
class Outgoing:
    data: bytes
    address: tuple[str, int]
    on_result: OnResult | None  # None once it got the result
    answer: Answer | None = None  # the final response, once it arrived


def request_key(request: Request) -> Key:
    """The :class:`Key` a request's top Via and CSeq give it."""
    number, method = request.cseq
    return Key.of(parse_via(request.headers.get_all("Via")[0]).branch or "", number, method)


class NotifyEndpoint(DatagramProtocol):
    """Sends requests and runs their client transactions on one bound UDP socket."""

    def __init__(self, clock: Any, timers: Timers = Timers(), counters: Counter | None = None) -> None:
        self.clock = clock
        self.table: TransactionTable[Outgoing] = TransactionTable(timers)
        self.counters = counters if counters is not None else Counter()
        self._call: Any = None
        self._armed_for: float | None = None
        self._stopped = False
        self._local: tuple[str, int] | None = None
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None

    # --- public ---
    @property
    def local(self) -> tuple[str, int]:
        if self._local is None:  # bound once, asked once per NOTIFY
            assert self.transport is not None, "asked before the socket is bound"
            address = self.transport.getHost()
            self._local = (address.host, address.port)
        return self._local

    def send(self, request: Request, address: tuple[str, int], on_result: OnResult,
             timers: Timers | None = None, key: Key | None = None) -> Key:
        """Send ``request`` (its top Via's branch and CSeq identify it) and run its transaction
        (with ``timers`` when given, else the endpoint's); ``on_result`` gets the
        :class:`Result` once, with the final :class:`Answer` (None on a timeout). ``key``: the
        request's, when the caller that built it knows it (read back from the request else)."""
        if self._stopped:
            raise RuntimeError("endpoint stopped")
        if key is None:
            key = request_key(request)
        if key in self.table:
            raise ValueError(f"a transaction with branch {key.branch!r} already exists")
        out = Outgoing(request.to_bytes(), address, on_result)
        now = self.clock.seconds()
        # The datagram first (the phone waits for it), then its transaction: no answer can be
        # read before this returns to the reactor, so the transaction is there for it anyway.
        self._write(out)
        self.table.start(key, out, now, timers)
        self._arm()
        return key

    def stop(self) -> int:
        """No retransmission after this; returns how many transactions were cut short."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self.table.cancel_all()

    # --- twisted ---
    def startProtocol(self) -> None:
        # A boot storm's 200 OKs arrive while the reactor is busy with MQTT: the default
        # ~200 KB receive buffer holds about a hundred, and each one dropped costs a
        # retransmission T1 later (measured: 1,586 of 2,000 NOTIFYs retransmitted).
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass
            # Twisted's Port.write asks of every address whether it is IPv4 and whether it is
            # IPv6, in Python, before the socket's sendto (as the listener found for its
            # answers). Every address here is an IPv4 one already checked (notifier.build's
            # destination), so the datagrams go to sendto itself; its errors are OSError, which
            # _write handles (Port.write would raise MessageLengthError, which it did not).
            self._sendto = sock.sendto

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse(data)
        except SipParseError as exc:
            self.counters["sip_malformed"] += 1
            log.debug("dropped malformed datagram from {addr}: {error}", addr=addr, error=str(exc))
            return
        if not isinstance(message, Response):
            # Nothing is addressed to this socket but answers to our NOTIFYs.
            self.counters["sip_requests_ignored"] += 1
            return
        key = response_key(message)
        event = self.table.receive(key, message.status, message.reason, self.clock.seconds()) if key else None
        if event is None:
            self.counters["sip_stray_responses"] += 1
            return
        if event.action is Action.FINAL:
            event.entry.request.answer = Answer(message, (addr[0], addr[1]))
        self._handle([event])

    # --- internals ---
    def _write(self, out: Outgoing) -> None:
        assert self.transport is not None, "a NOTIFY sent before the socket is bound"
        try:
            if self._sendto is not None:
                self._sendto(out.data, out.address)
            else:  # a transport without a socket (a test's, a bench's)
                self.transport.write(out.data, out.address)
        except OSError as exc:
            # The retransmission timer tries again; Timer F reports the failure.
            self.counters["sip_send_errors"] += 1
            log.warn("sending to {addr} failed: {error}", addr=out.address, error=str(exc))

    def _handle(self, events: list[Event[Outgoing]]) -> None:
        for event in events:
            out = event.entry.request
            if event.action is Action.RETRANSMIT:
                self.counters["notify_retransmissions"] += 1
                self._write(out)
            elif event.action is Action.FINAL:
                result = event.entry.transaction.result
                assert result is not None  # FINAL is reported once the result is set
                on_result, answer = out.on_result, out.answer
                # The transaction stays until Timer K (T4, 5 s) to absorb answers sent again,
                # and needs neither its request's bytes nor whoever waited: let go now, the
                # NOTIFY's objects (its Request, the answer, the service's Attempt) are freed at
                # once, not after Timer K (objects the garbage collector tracks, per NOTIFY in
                # Timer K: 23 before, 10 now; at 500/s that is 2,500 NOTIFYs' worth).
                out.on_result, out.answer, out.data = None, None, b""
                if on_result is None:
                    continue  # reported already (FINAL comes once: never seen)
                try:
                    on_result(result, answer)
                except Exception:
                    log.failure("result handler failed")
            elif event.action is Action.ABSORBED:
                self.counters["sip_duplicate_responses"] += 1
        self._arm()

    def _arm(self) -> None:
        if self._stopped:
            return
        due = self.table.next_deadline()
        if due is None:
            return
        if self._call is not None and self._call.active():
            if self._armed_for is not None and self._armed_for <= due:
                return
            self._call.cancel()
        self._armed_for = due
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        # A clock may read a hair before the time it was asked to wake at (float rounding).
        now = max(self.clock.seconds(), self._armed_for or 0.0)
        self._call = None
        self._armed_for = None
        self._handle(self.table.advance(now))
