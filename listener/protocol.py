"""The thin Twisted side of the listener: datagrams from a socket into the core and back."""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Callable

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from listener.discovery import Sighting, SubscribeCore

log = Logger(namespace="listener")


class AnswerTimes:
    """Seconds from a datagram's arrival in the process to its answer leaving, recent ones."""

    def __init__(self, keep: int = 4096) -> None:
        self.recent: deque[float] = deque(maxlen=keep)

    def percentiles_us(self) -> dict[str, int]:
        if not self.recent:
            return {}
        ordered = sorted(self.recent)
        last = len(ordered) - 1
        return {
            "answer_us_p50": round(ordered[last // 2] * 1e6),
            "answer_us_p99": round(ordered[round(last * 0.99)] * 1e6),
            "answer_us_max": round(ordered[last] * 1e6),
        }




class SubscribeProtocol(DatagramProtocol):
    """One per interface socket. ``interface`` is the local address the socket joined on.

    The order of a datagram's work is the point of this class. The answer is written first,
    as soon as the core has decided it; what follows does not hold it up: the answer-time
    sample, then the new phone's sighting handed to ``on_discovered`` (the service's outbox),
    which only files it. Making the discovery (vendor and model named, payload encoded, kept),
    publishing it and logging it wait until the read is over: Twisted reads a socket's
    datagrams in one loop, until none is waiting (or 256 KiB of them), so every SUBSCRIBE
    that has arrived is answered before any MQTT work starts. A phone's answer then waits
    only for the SUBSCRIBEs ahead of it, never for other phones' discoveries, PUBACKs or log
    lines. When the read is over (:class:`AnsweringPort`), ``on_read_done`` is called: the
    service makes and publishes the filed discoveries there and then, in the same reactor turn
    (``callLater(0)`` is the fallback, and what a burst's later batches use)."""

    noisy = False  # the service logs its group memberships itself

    def __init__(self, core: SubscribeCore, interface: str, clock: Any,
                 on_discovered: Callable[[Sighting], Any], times: AnswerTimes | None = None,
                 on_read_done: Callable[[], Any] | None = None) -> None:
        self.core = core
        self.interface = interface
        self.clock = clock
        self.on_discovered = on_discovered
        self.times = times if times is not None else AnswerTimes()
        self.on_read_done = on_read_done
        self.send_errors = 0
        self._send: Callable[[bytes, tuple[str, int]], Any] | None = None

    def startProtocol(self) -> None:
        # Twisted's Port.write asks of every address whether it is IPv4 and whether it is IPv6,
        # twice each, in Python: 6 us an answer, a tenth of the listener's CPU per SUBSCRIBE.
        # The address here is always the IPv4 source the kernel gave with the datagram, so the
        # answer goes to the socket's own sendto (errors are OSError, as from write).
        sock = getattr(self.transport, "socket", None)
        self._send = sock.sendto if sock is not None else None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = perf_counter()
        outcome = self.core.handle(data, addr, self.interface, self.clock.seconds())
        reply = outcome.reply
        if reply is None:
            return
        assert self.transport is not None and outcome.dest is not None  # a datagram came in
        try:
            if self._send is not None:
                self._send(reply, outcome.dest)
            else:
                self.transport.write(reply, outcome.dest)
        except OSError as exc:
            # The phone is gone or unroutable; its next retransmission tries again.
            self.send_errors += 1
            log.debug("answer to {dest} failed: {error}", dest=outcome.dest, error=exc)
        self.times.recent.append(perf_counter() - started)
        if outcome.sighting is not None:
            self.on_discovered(outcome.sighting)

    def readDone(self) -> None:
        """This socket's read is over: every datagram that was waiting has been answered, or
        Twisted stopped at its 256 KiB a read (a burst), the rest then waiting for the next."""
        if self.on_read_done is not None:
            self.on_read_done()


class AnsweringPort(udp.Port):
    """Twisted's UDP port, telling its protocol when a read is over.

    Twisted's ``doRead`` hands over datagrams until the socket has none left (or 256 KiB were
    read); only then may the listener spend time on discoveries without delaying an answer.
    Without this hook the discovery waited for a ``callLater(0)``: the next reactor turn, its
    poll, and then (publishing outside a read of the broker's socket) one more turn for the
    socket to be reported writable: a fifth to a quarter of the time between a phone's 200 OK
    and its discovery's PUBLISH at 500 phones/s (docs/BENCHMARKS.md, "Listener hop")."""

    @classmethod
    def adopt(cls, reactor: Any, fileno: int, family: int, protocol: SubscribeProtocol,
              max_packet_size: int) -> "AnsweringPort":
        """What ``reactor.adoptDatagramPort`` does, with this class."""
        port: AnsweringPort = cls._fromListeningDescriptor(  # Twisted's own constructor for it
            reactor, fileno, family, protocol, maxPacketSize=max_packet_size)
        port.startListening()
        return port

    def doRead(self) -> None:
        try:
            super().doRead()
        finally:
            # whatever ended the read: discoveries filed during it are not left behind
            protocol = self.protocol
            if isinstance(protocol, SubscribeProtocol):
                try:
                    protocol.readDone()
                except Exception:
                    # Raised out of doRead, it would make Twisted close this port: the listener
                    # would stop hearing phones. A bad discovery costs a log line instead.
                    log.failure("publishing the discoveries of a read failed")
