"""The thin Twisted side of the listener: datagrams from a socket into the core and back."""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from listener.discovery import SubscribeCore
from services.messages import Discovered

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
    """One per interface socket. ``interface`` is the local address the socket joined on."""

    noisy = False  # the service logs its group memberships itself

    def __init__(self, core: SubscribeCore, interface: str, clock: Any,
                 on_discovered: Callable[[Discovered], Any], times: AnswerTimes | None = None) -> None:
        self.core = core
        self.interface = interface
        self.clock = clock
        self.on_discovered = on_discovered
        self.times = times if times is not None else AnswerTimes()
        self.send_errors = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = perf_counter()
        outcome = self.core.handle(data, addr, self.interface, self.clock.seconds())
        if outcome.reply is not None:
            assert self.transport is not None  # a datagram came in on it
            try:
                self.transport.write(outcome.reply, outcome.dest)
            except OSError as exc:
                # The phone is gone or unroutable; its next retransmission tries again.
                self.send_errors += 1
                log.debug("answer to {dest} failed: {error}", dest=outcome.dest, error=exc)
            self.times.recent.append(perf_counter() - started)
        if outcome.discovered is not None:
            self.on_discovered(outcome.discovered)
