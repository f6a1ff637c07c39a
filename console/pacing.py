"""Reading the broker in batches: the console takes its device messages at most every ``PACE``.

The console is on no phone's path, yet it takes every message of every phone (a ready phone's
discovery, NOTIFY status and enrolment; a first boot's sixteen), and at 500 phones a second each
came on its own: a wakeup of the process (epoll, the reactor's turn, a ``recv``) per message, most
of the console's CPU, on a machine whose notifier and listener wait for a core meanwhile. After a
read that emptied the socket, the console stops watching it for ``PACE``: what the broker sends
meanwhile waits in the kernel's buffer and is read at once, in one wakeup (at 500 ready phones a
second about forty messages). A message after a quiet spell is read when it comes; while messages
keep coming none waits more than ``PACE``, far below the event stream's own batching (a quarter
second, ``console.service.FLUSH_EVERY``). A read that did not empty the socket (the bus reads
``READ_BATCH`` packets a turn) is followed at once, as before: a backlog is never read slower.

The broker's side is unchanged: it writes to the socket as before; while the console does not
read, the kernel's receive buffer (and past it mosquitto's queue, ``max_queued_messages``) holds
the messages, as it does for any reader that is busy.

The bus makes the socket's reader (``services.mqtt.connect.SocketAdapter``) anew on each
connection and has no public switch for this (yet): on each connect the reader becomes a
:class:`PacedReader`, the same reader whose every read ends with :meth:`ReadPacing.after_read`
(a class of its own, not a ``doRead`` put on the instance: CPython's method caches may call the
class's method past an instance attribute of that name). This module is the one place that
knows ``Bus._reader`` and ``SocketAdapter._again``; a reader of another class (the bus changed)
is left as it is, and the console reads as before, unpaced.
"""

from __future__ import annotations

from typing import Any

from services.mqtt.connect import SocketAdapter

# Seconds between two reads of the broker's socket while messages keep coming. Not longer: what
# a pause gathers is read in one burst of CPU (at 500 first boots a second, 16 messages a phone,
# 50 ms gathered ~400 of them, several ms that the scheduler may run ahead of a woken notifier);
# 20 ms keeps nearly all of the gain (docs/BENCHMARKS.md).
PACE = 0.02


class ReadPacing:
    """Pauses the bus's socket reader for ``interval`` after every read that emptied it."""

    def __init__(self, reactor: Any, bus: Any, interval: float = PACE) -> None:
        self.reactor = reactor
        self.bus = bus
        self.interval = interval
        self.pauses = 0  # reads followed by a pause (for tests and the bench)
        self._call: Any = None

    def start(self) -> None:
        # on every connect: the bus makes a new reader for each connection's socket
        self.bus.on_connect(self._wrap)
        if self.bus.connected:
            self._wrap()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _wrap(self) -> None:
        reader = getattr(self.bus, "_reader", None)
        if type(reader) is SocketAdapter:
            paced: Any = reader
            paced.__class__ = PacedReader
            paced.pacing = self

    def after_read(self, reader: "PacedReader") -> None:
        # a read that stopped at its batch's end comes back next turn (_again): no pause then
        if reader.active and reader._again is None and self.bus._reader is reader:
            self._pause(reader)

    def _pause(self, reader: Any) -> None:
        if self._call is not None and self._call.active():
            return
        self.pauses += 1
        self.reactor.removeReader(reader)
        self._call = self.reactor.callLater(self.interval, self._resume, reader)

    def _resume(self, reader: Any) -> None:
        self._call = None
        # a connection dropped meanwhile took its reader out for good (the bus made a new one)
        if reader.active and self.bus._reader is reader:
            self.reactor.addReader(reader)


class PacedReader(SocketAdapter):
    """The bus's reader, each of whose reads is followed by its pacing's decision."""

    pacing: ReadPacing

    def doRead(self) -> None:
        super().doRead()
        self.pacing.after_read(self)
