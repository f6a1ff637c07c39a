"""The fileserver's HTTP connections: bodies refused unread, request heads given a deadline,
and requests that skip what Twisted's general machinery does for a site of many resources.

Phones only GET and HEAD files. Twisted's own channel buffers any request body it is sent (one
of 100 kB or more in a temp file) before the resource can answer, so a few large POSTs fill the
disk; and its idle timeout restarts with every byte, so a client sending one header byte every
few seconds holds a connection for ever. This channel answers a request with a body (413) or
any other method (405) as soon as its head is read, without reading the body, and closes a
connection whose request head is not complete ``head_timeout`` seconds after it began.

Twisted's general request path costs most of a download (docs/BENCHMARKS.md, "Fileserver
request path (issue 15)"). :class:`FileRequest` takes back what our one leaf resource never uses: resource traversal and its percent-decoding
of every path segment, the Date formatted per request (once a second here), and the response
headers set one by one into Twisted's header map, each name normalised, then read back out and
joined: a file's are written as one block computed when the file was stored.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol, cast

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server

# After refusing a body: the client may still be sending it. Closing at once with unread bytes
# makes the kernel send a reset, which can destroy our answer before the client reads it; so
# what still arrives is read and dropped (never stored) for this long, then the connection goes.
LINGER = 2.0

_ALLOWED = (b"GET", b"HEAD")
# read once: twisted.web.http is a deprecation proxy, each attribute read through it a call
_REASONS, _NO_BODY_CODES = http.RESPONSES, http.NO_BODY_CODES
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


SERVER = b"pnp"  # Twisted's default names its version; an attacker gains nothing from ours
# what a file's header block (ServedFile.head) holds: set before it, they would be sent twice
_BLOCK = frozenset((b"content-type", b"etag", b"repr-digest", b"cache-control", b"content-length"))


class FileRequest(server.Request):
    """A request to a :class:`FileSite`, whose resource is a leaf that answers every path."""

    def process(self) -> None:
        # Site.process without the traversal (the leaf is the answer for every path; it reads
        # the raw ``uri``, never the decoded segments) and with the Date of this second
        site: FileSite = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
        self.site = site
        self.sitepath: list[bytes] = []
        self.prepath = []
        self.postpath = []
        headers = self.responseHeaders
        headers.setRawHeaders(b"Server", [SERVER])
        headers.setRawHeaders(b"Date", [site.date()])
        if self.path == b"*":
            self._handleStar()
            return
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def answer(self, code: int, head: bytes, body: bytes) -> bool:
        """Write the whole answer at once and finish: status line, the headers set so far,
        ``head`` (header lines, each ending in CRLF) and, unless this is a HEAD, ``body``.

        False (nothing written) when this request is not in the plain state that allows it
        (already writing, a cookie or an ETag set through Twisted's API, or a header that
        ``head`` also holds); the caller then answers the usual way."""
        if self.startedWriting or self._disconnected or self.cookies or self.etag is not None \
                or self.lastModified is not None:
            return False
        out = [self.clientproto, b" %d " % code, _REASONS.get(code, b"Unknown Status"), b"\r\n"]
        for name, values in self.responseHeaders.getAllRawHeaders():
            if name.lower() in _BLOCK:
                return False
            for value in values:
                out += (name, b": ", value, b"\r\n")
        self.setResponseCode(code)
        self.startedWriting = 1
        out += (head, b"\r\n")
        if body and self.method != b"HEAD" and code not in _NO_BODY_CODES:
            out.append(body)
            self.sentLength += len(body)
        self.channel.writeSequence(out)
        self.finish()
        return True


def answer(request: server.Request, code: int, headers: tuple[tuple[bytes, bytes], ...], head: bytes,
           body: bytes) -> None:
    """Answer ``request`` with ``code``, ``headers`` (``head`` is the same as header lines) and
    ``body`` (not sent to a HEAD): at once for a :class:`FileRequest`, else Twisted's way."""
    if isinstance(request, FileRequest) and request.answer(code, head, body):
        return
    request.setResponseCode(code)
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])
    request.write(body if request.method != b"HEAD" else b"")
    request.finish()


class FileSite(server.Site):
    """A Site whose connections are :class:`BoundedChannel` s. ``refused(status)`` is told of
    every request answered by the channel itself (405, 408, 413), for the metrics."""

    # Twisted types this as its own default factory; buildProtocol takes any HTTPChannel class
    protocol = BoundedChannel  # type: ignore[assignment]
    requestFactory = FileRequest
    _date_second = -1
    _date = b""

    def __init__(self, resource: Any, head_timeout: float, refused: Callable[[int], Any],
                 timeout: float = 30.0) -> None:
        super().__init__(resource, timeout=timeout, requestFactory=FileRequest)
        self.head_timeout = head_timeout
        self.refused = refused

    def date(self) -> bytes:
        """The Date header's value: formatted once a second, not per request."""
        now = int(time.time())
        if now != self._date_second:
            self._date = http.datetimeToString(now)
            self._date_second = now
        return self._date

    def log(self, request: Any) -> None:
        """No access log: a line per download costs more than serving it; /metrics and the
        fetched topic say what was served."""
