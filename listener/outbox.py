"""Discoveries on their way to the broker: bounded, coalesced per topic, fed in small windows.

Why not hand every discovery to the bus at once: paho walks its whole list of unacknowledged
messages on every PUBACK, so ten thousand discoveries queued in a boot storm cost quadratic
time on the very thread that answers the phones. The outbox keeps at most ``window`` messages
in flight and the rest here, where a newer discovery of the same phone replaces an older one
(the topic is retained: only the last one matters). While the broker is away everything waits
here, up to ``max_pending`` phones; past that, new discoveries are dropped and counted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from twisted.logger import Logger

log = Logger(namespace="listener")


class Outbox:
    def __init__(self, bus: Any, reactor: Any, window: int = 16, max_pending: int = 100_000,
                 retry: float = 0.002, batch: int = 8,
                 encode: Callable[[str, Any], bytes] | None = None,
                 expiry: Callable[[str], int | None] | None = None,
                 sent: Callable[[str, bytes], Any] | None = None) -> None:
        self.bus = bus
        # (topic, payload) of each message handed to the bus, called once its batch is
        # written: bookkeeping that need not hold the message back
        self.sent = sent or (lambda topic, payload: None)
        # seconds the broker keeps a topic's message (asked after encoding it), None: for ever
        self.expiry = expiry or (lambda topic: None)
        # Items are encoded when they leave, not when they come: in a burst, that work waits
        # until every datagram at hand is answered.
        # (topic, item) -> payload
        self.encode = encode or (lambda topic, item: item)
        self.reactor = reactor
        self.window = window
        # publishes per reactor turn: datagrams that arrive meanwhile wait at most this many
        self.batch = batch
        self.max_pending = max_pending
        self.retry = retry
        self.dropped = 0
        self.coalesced = 0
        self._pending: OrderedDict[str, Any] = OrderedDict()
        self._call: Any = None
        bus.on_connect(self.kick)
        # A full window drains on the PUBACK that frees it: a poll (``retry``) added up to its
        # period to the discoveries waiting behind, on the path of their NOTIFYs.
        bus.on_acknowledged(self.kick)

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, topic: str, payload: Any, soon: bool = True) -> None:
        """File ``payload`` for ``topic``. ``soon``: send it on the next turn; without, the
        caller calls :meth:`now` (or :meth:`kick`) itself once it may be sent."""
        pending = self._pending
        if topic in pending:
            self.coalesced += 1
            del pending[topic]
        elif len(pending) >= self.max_pending:
            self.dropped += 1
            return
        pending[topic] = payload
        if soon:
            self.kick()

    def kick(self) -> None:
        """Send what the window allows on the next reactor turn (after the datagrams at hand
        are answered)."""
        if not self._pending:
            return
        if self._call is None:
            self._call = self.reactor.callLater(0, self.drain)
        elif self._call.active() and self._call.getTime() > self.reactor.seconds():
            self._call.reset(0)  # e.g. the broker is back: do not wait out the slow retry

    def now(self) -> None:
        """Send what the window allows at once, not on the next turn: the caller knows nothing
        more urgent waits (the listener, once a read has answered every datagram at hand)."""
        if not self._pending:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.drain()

    def drain(self) -> None:
        self._call = None
        pending = self._pending
        bus = self.bus
        room = 0
        if bus.connected:
            room = self.window - bus.queued
            # One write for the batch, made at its end, rather than a wait for the reactor to
            # report the broker's socket writable (Bus.batch)
            handed: list[tuple[str, bytes]] = []
            try:
                with bus.batch():
                    for _ in range(min(room, self.batch)):
                        if not pending:
                            break
                        topic, item = pending.popitem(last=False)
                        room -= 1
                        try:
                            self._publish(topic, item, handed)
                        except Exception:
                            # one discovery that cannot be made (a bug) is dropped and counted,
                            # never the batch around it nor the ones behind
                            self.dropped += 1
                            log.failure("a discovery for {topic} could not be published", topic=topic)
            finally:
                # what the bus took is kept (Keeper) whatever happened after it
                for topic, data in handed:
                    self.sent(topic, data)
        if pending and self._call is None:
            # Room left: the next batch on the next turn. Window full: the next PUBACK kicks
            # us (the retry is only a fallback). Broker away: its return (on_connect) does.
            delay = 0 if room > 0 else self.retry if bus.connected else 1.0
            self._call = self.reactor.callLater(delay, self.drain)

    def flush_all(self) -> None:
        """At stop: hand everything to the bus, which flushes what it can."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        handed: list[tuple[str, bytes]] = []
        while self._pending:
            topic, item = self._pending.popitem(last=False)
            self._publish(topic, item, handed)
        for topic, data in handed:
            self.sent(topic, data)

    def _publish(self, topic: str, item: Any, handed: list[tuple[str, bytes]]) -> None:
        data = self.encode(topic, item)
        expiry = self.expiry(topic)
        if expiry is None:
            done = self.bus.publish(topic, data, retain=True)
        else:
            done = self.bus.publish(topic, data, retain=True, expiry=expiry)
        if done:
            handed.append((topic, data))
        else:
            self.dropped += 1  # the bus's queue is full: not kept either, as never sent

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
