"""The thin Twisted side of the listener: datagrams from a socket into the core and back."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from listener.discovery import SubscribeCore
from services.messages import Discovered

log = Logger(namespace="listener")


class SubscribeProtocol(DatagramProtocol):
    """One per interface socket. ``interface`` is the local address the socket joined on."""

    def __init__(self, core: SubscribeCore, interface: str, clock: Any,
                 on_discovered: Callable[[Discovered], Any]) -> None:
        self.core = core
        self.interface = interface
        self.clock = clock
        self.on_discovered = on_discovered
        self.send_errors = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        outcome = self.core.handle(data, addr, self.interface, self.clock.seconds())
        if outcome.reply is not None:
            try:
                self.transport.write(outcome.reply, outcome.dest)
            except OSError as exc:
                # The phone is gone or unroutable; its next retransmission tries again.
                self.send_errors += 1
                log.debug("answer to {dest} failed: {error}", dest=outcome.dest, error=exc)
        if outcome.discovered is not None:
            self.on_discovered(outcome.discovered)
