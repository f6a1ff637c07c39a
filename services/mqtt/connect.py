"""The connection under the bus: a TCP connect that does not block the reactor, and the
adapter through which the reactor drives paho's socket (no background thread)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from twisted.internet import defer

from services.mqtt.coalesce import coalesce
from services.mqtt.paho_internals import packet_reader, write_registered

READ_BATCH = 64  # MQTT packets handled per turn of the reactor
# What the handlers of a batch publish (and the batch's PUBACKs) leaves at the batch's end, in one
# write (doRead). A slow handler's output (a generator's render) therefore waits for the rest of
# its batch; flushing every 1 or 10 ms within the batch was tried (issue 15) and cost a 10,000
# phone storm 60-70 % more notifier and broker CPU, and a third of the phones provisioned
# (docs/BENCHMARKS.md, "Latency fixes (issue 15)").


class Connecting:
    """One non-blocking TCP connect, watched by the reactor until writable (done) or timed out."""

    def __init__(self, reactor: Any, address: tuple[str, int], timeout: float) -> None:
        self.reactor = reactor
        self.done: defer.Deferred[socket.socket] = defer.Deferred()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        error = self.sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            self._finish(OSError(error, os.strerror(error)))
            return
        self._timer = reactor.callLater(timeout, self._timed_out)
        reactor.addWriter(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def doWrite(self) -> None:
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(OSError(error, os.strerror(error)) if error else None)

    def _timed_out(self) -> None:
        self._finish(socket.timeout("timed out"))

    def _finish(self, error: Exception | None) -> None:
        if self.done.called:
            return
        timer = getattr(self, "_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        self.reactor.removeWriter(self)
        if error is None:
            self.done.callback(self.sock)
        else:
            self.sock.close()
            self.done.errback(error)

    def cancel(self) -> None:
        self._finish(ConnectionAbortedError("stopped"))

    def connectionLost(self, reason: Any) -> None:
        # A refused connect is a hang-up, which the reactor reports here rather than to doWrite;
        # without this the attempt would wait for its timeout.
        if self.done.called:
            return
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(OSError(error, os.strerror(error)) if error else ConnectionAbortedError("closed"))

    def logPrefix(self) -> str:
        return "mqtt-connect"


class SocketAdapter:
    """Adapts paho's socket to the reactor's IReadDescriptor/IWriteDescriptor. ``active`` is
    cleared when the bus drops it, so a read carried over to the next turn does not run."""

    def __init__(self, reactor: Any, client: mqtt.Client, sock: Any) -> None:
        self.reactor = reactor
        self.client = client
        self.sock = sock
        self.active = True
        # True while doRead (or a Bus.batch) runs: what its handlers publish and its PUBACKs
        # are written at its end (flush), so the bus does not ask the reactor to watch for
        # writability meanwhile (an epoll_ctl to add, a poll round, and an epoll_ctl to remove
        # for every read that queues a packet)
        self.reading = False
        self._fileno: int = sock.fileno()
        self._again: Any = None
        # Bus.pace_reads: after a read that emptied the socket, stop watching it this long
        self.pace = 0.0
        self.pace_clock: Any = reactor
        self.pauses = 0
        self._resume: Any = None

    def fileno(self) -> int:
        return self._fileno

    def doRead(self) -> None:
        client = self.client
        self.reading = True
        try:
            self._read_some(client)
        finally:
            self.reading = False
        # What the handlers published and the PUBACKs of what was read go out now, not after
        # another turn of the reactor: the broker sends a client only a few unacknowledged
        # messages at a time, so a late PUBACK stalls the next ones.
        self.flush()
        if self.pace and self.active and self._again is None and self._resume is None:
            # (a read that stopped at its batch's end comes back next turn: a backlog is never
            # read slower)
            self.pauses += 1
            self.reactor.removeReader(self)
            self._resume = self.pace_clock.callLater(self.pace, self._watch)

    def _watch(self) -> None:
        self._resume = None
        if self.active:
            self.reactor.addReader(self)

    def deactivate(self) -> None:
        """The bus dropped this socket: nothing of it runs again (a read carried over to the
        next turn, a paused read's return)."""
        self.active = False
        for call in (self._again, self._resume):
            if call is not None and call.active():
                call.cancel()
        self._again = self._resume = None

    def flush(self) -> None:
        """Write what paho queued while ``reading`` was set (a read's handlers, or a batch of
        publishes: ``Bus.batch``), in one ``send`` where it can, at once."""
        client = self.client
        if client.want_write() or write_registered(client):
            # (registered with nothing queued: a TLS read that wanted to write; the bus did not
            # watch for it while reading, and loop_write clears paho's flag)
            coalesce(client)
            client.loop_write()
            if self.active and client.want_write():
                # the socket took only part: the rest when it is writable again
                self.reactor.addWriter(self)

    def _read_some(self, client: Any) -> None:
        """At most READ_BATCH packets, then back to the reactor. paho's ``loop_read`` reads as
        many packets as messages await a PUBACK, and every handler that publishes adds one: in
        a burst one call grew to thousands of messages and seconds, while timers and other
        sockets (the notifier's 200 OKs, then retransmitted) waited. Same steps as loop_read."""
        steps = packet_reader(client)
        if steps is None:
            client.loop_read()
            return
        read_packet, handle_rc = steps
        for _ in range(READ_BATCH):
            if client.socket() is None or not self.active:
                return  # closed, or the bus stopped (by a handler of the last packet)
            rc = read_packet()
            if rc > 0:
                handle_rc(rc)
                return
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return
        # More may be waiting; with TLS it may sit decrypted in the SSL object, where epoll
        # does not see it, so come back next turn rather than wait for the socket.
        if self._again is None:
            self._again = self.reactor.callLater(0, self._more)

    def _more(self) -> None:
        self._again = None
        if self.active:
            self.doRead()

    def doWrite(self) -> None:
        coalesce(self.client)
        self.client.loop_write()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "mqtt"
