"""The fileserver's HTTP connections: bodies refused unread, request heads given a deadline.

Phones only GET and HEAD files. Twisted's own channel buffers any request body it is sent (one
of 100 kB or more in a temp file) before the resource can answer, so a few large POSTs fill the
disk; and its idle timeout restarts with every byte, so a client sending one header byte every
few seconds holds a connection for ever. This channel answers a request with a body (413) or
any other method (405) as soon as its head is read, without reading the body, and closes a
connection whose request head is not complete ``head_timeout`` seconds after it began.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, cast

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server

# After refusing a body: the client may still be sending it. Closing at once with unread bytes
# makes the kernel send a reset, which can destroy our answer before the client reads it; so
# what still arrives is read and dropped (never stored) for this long, then the connection goes.
LINGER = 2.0

_ALLOWED = (b"GET", b"HEAD")
_PLAIN = b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nServer: pnp\r\n"


def _response(status: int, reason: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d %s\r\n" % (status, reason) + _PLAIN + extra
            + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


_METHOD = _response(405, b"Method Not Allowed", b"only GET and HEAD\n", b"Allow: GET, HEAD\r\n")
_BODY = _response(413, b"Content Too Large", b"request bodies are not accepted\n")
_TIMEOUT = _response(408, b"Request Timeout", b"the request head did not arrive in time\n")


class _Connection(Protocol):
    """What the channel uses of its TCP or TLS transport; ITransport declares neither
    ``disconnecting`` nor ``abortConnection``."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def abortConnection(self) -> None: ...


class BoundedChannel(http.HTTPChannel):
    """An HTTPChannel that never reads a request body and bounds the time a head may take.

    Its factory is a :class:`FileSite` (``head_timeout``, ``refused``)."""

    _head_call: Any = None
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # From the connection, not the first byte: a TLS handshake or a silent client counts too.
        self._arm_head_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._refused or self._connection.disconnecting:
            return  # the lingering rest of a refused body, or bytes behind a 400: dropped unread
        if self._head_call is None and not self._handlingRequest:
            self._arm_head_deadline()  # the first byte of the next request on a kept-alive connection
        super().dataReceived(data)

    # After a refusal the parser may still be inside one read's bytes (the body's start, a
    # pipelined request): nothing of it is parsed, stored or answered.
    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        # self.length is None for a chunked body and the Content-Length otherwise (0 without one).
        if self._command not in _ALLOWED:
            self._refuse(405, _METHOD)
        elif self.length != 0:
            self._refuse(413, _BODY)
        else:
            super().allHeadersReceived()

    @property
    def _connection(self) -> _Connection:
        return cast(_Connection, self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_deadline()
        super().connectionLost(reason)

    # --- internals ---
    def _arm_head_deadline(self) -> None:
        timeout = self.factory.head_timeout
        if timeout:
            self._head_call = self.callLater(timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_timed_out(self) -> None:
        self._head_call = None
        if self._connection.disconnecting:
            return  # closing already: Twisted refused a malformed head itself
        self.factory.refused(408)
        self._refused = True
        self.setTimeout(None)
        self._connection.write(_TIMEOUT)
        self.loseConnection()
        # A client that does not read our answer (or never finished a TLS handshake, so the
        # answer cannot even be sent) cannot keep the connection by that either.
        self._abortingCall = self.callLater(LINGER, self._abort)

    def _refuse(self, status: int, answer: bytes) -> None:
        self.factory.refused(status)
        self._refused = True
        self.setTimeout(None)
        self._connection.write(answer)
        self._abortingCall = self.callLater(LINGER, self._close_after_linger)

    def _close_after_linger(self) -> None:
        self.loseConnection()
        self._abortingCall = self.callLater(LINGER, self._abort)

    def _abort(self) -> None:
        # Twisted's forceAbortClient would log a line per connection: an attacker's to write
        self._abortingCall = None
        self._connection.abortConnection()


class FileSite(server.Site):
    """A Site whose connections are :class:`BoundedChannel` s. ``refused(status)`` is told of
    every request answered by the channel itself (405, 408, 413), for the metrics."""

    # Twisted types this as its own default factory; buildProtocol takes any HTTPChannel class
    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, head_timeout: float, refused: Callable[[int], Any],
                 timeout: float = 30.0) -> None:
        super().__init__(resource, timeout=timeout)
        self.head_timeout = head_timeout
        self.refused = refused

    def log(self, request: Any) -> None:
        """No access log: a line per download costs more than serving it; /metrics and the
        fetched topic say what was served."""
