"""Reading the broker in batches: the console takes its device messages at most every ``PACE``.

The console is on no phone's path, yet it takes every message of every phone (a ready phone's
discovery, NOTIFY status and enrolment; a first boot's sixteen), and at 500 phones a second each
came on its own: a wakeup of the process (epoll, the reactor's turn, a ``recv``) per message, most
of the console's CPU, on a machine whose notifier and listener wait for a core meanwhile. After a
read that emptied the socket, the console stops watching it for ``PACE``: what the broker sends
meanwhile waits in the kernel's buffer and is read at once, in one wakeup (at 500 phones a second
about a hundred messages). A message after a quiet spell is read when it comes; while messages
keep coming none waits more than ``PACE``, far below the event stream's own batching (a quarter
second, ``console.service.FLUSH_EVERY``). A read that did not empty the socket (the bus reads
``READ_BATCH`` packets a turn) is followed at once, as before: a backlog is never read slower.

The broker's side is unchanged: it writes to the socket as before; while the console does not
read, the kernel's receive buffer (and past it mosquitto's queue, ``max_queued_messages``) holds
the messages, as it does for any reader that is busy.

This wraps the bus's socket reader (``services.mqtt.connect.SocketAdapter``), which the bus makes
anew on each connection: the bus has no public switch for it (yet), so this module is the one
place that knows those two attributes (``Bus._reader``, ``SocketAdapter._again``); without them
(the bus changed) the console reads as before, unpaced.
"""

from __future__ import annotations

from typing import Any

PACE = 0.05  # seconds between two reads of the broker's socket, while messages keep coming


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
        if reader is None or getattr(reader, "paced", False) or not hasattr(reader, "_again"):
            return
        read = reader.doRead

        def paced_read() -> None:
            read()
            # a read that stopped at its batch's end comes back next turn (_again): no pause
            if reader.active and reader._again is None and self.bus._reader is reader:
                self._pause(reader)

        reader.doRead = paced_read  # the bus's own follow-up reads (_more) call it too
        reader.paced = True

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
