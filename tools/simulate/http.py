"""A phone's HTTP client: one GET per TCP connection, from the phone's own address.

Phones open a new connection per download and the server closes it after the answer
(``Connection: close``), so the whole response is what arrived before the close: the parser
(:func:`parse_response`, sans-I/O) reads it once, with Content-Length, chunked or close-delimited
framing. Far lighter than twisted.web's Agent, which matters when ten thousand phones share a
CPU with the PBX they are measuring: plain HTTP goes over a bare non-blocking socket that the
reactor watches directly (no Connector, transport or Protocol), and a :class:`Client`'s timeouts
are swept a few times a second instead of each request arming and cancelling its own timer.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, cast
from urllib.parse import urlsplit

from twisted.internet import error as terror, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.ssl import optionsForClientTLS

MAX_RESPONSE = 4 * 1024 * 1024
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class HttpError(Exception):
    """A response we cannot read; the message says why."""


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes


@functools.lru_cache(maxsize=256)
def on_loopback(host: str) -> bool:
    """True for an IPv4 literal inside 127.0.0.0/8 (names are not resolved: no DNS, no surprise)."""
    try:
        return ipaddress.IPv4Address(host) in _LOOPBACK
    except ValueError:
        return False


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # "" when the URL names none
    port: int | None  # None when the URL's port is not a number
    head: str  # the request line and Host field

    @property
    def fetchable(self) -> bool:
        return self.scheme in ("http", "https") and bool(self.host)


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    """What a GET of ``url`` needs from it, worked out once: a phone asks for the same URL again
    after a Digest challenge, and after its reboot."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    try:
        port: int | None = parts.port or default
    except ValueError:
        port = None
    named = f"{host}:{port}" if port and port != default else host
    return _Target(parts.scheme, host, port, f"GET {path} HTTP/1.1\r\nHost: {named}\r\n")


def build_request(url: str, headers: dict[str, str]) -> bytes:
    lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    return (_target(url).head + "".join(lines) + "Connection: close\r\n\r\n").encode("latin-1")


def parse_response(data: bytes) -> HttpResponse:
    """The response in ``data``, everything the server sent before closing."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise HttpError("connection closed before the end of the headers" if data else "empty response")
    head, rest = data[:end].decode("latin-1"), data[end + 4:]
    lines = head.split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise HttpError(f"bad status line {lines[0][:60]!r}")
    status = int(status_line[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if status in (204, 304) or 100 <= status < 200:
        return HttpResponse(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return HttpResponse(status, headers, _dechunk(rest))
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError(f"bad Content-Length {headers['content-length'][:20]!r}") from None
        if len(rest) < length:
            raise HttpError(f"body cut short: {len(rest)} of {length} bytes")
        return HttpResponse(status, headers, rest[:length])
    return HttpResponse(status, headers, rest)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise HttpError("chunked body cut short")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(out)
        start = eol + 2
        if len(data) < start + size + 2:
            raise HttpError("chunked body cut short")
        out += data[start:start + size]
        pos = start + size + 2


class _Get(protocol.Protocol):
    def __init__(self, request: bytes, done: Callable[[HttpResponse | None, str | None], None]) -> None:
        self.request = request
        self.done = done
        self.buffer = bytearray()
        self.finished = False

    def connectionMade(self) -> None:
        assert self.transport is not None  # Twisted sets it before connectionMade
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_RESPONSE:
            self._finish(None, f"response larger than {MAX_RESPONSE} bytes")
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self.finished:
            return
        try:
            self._finish(parse_response(bytes(self.buffer)), None)
        except HttpError as exc:
            self._finish(None, str(exc))

    def _finish(self, response: HttpResponse | None, error: str | None) -> None:
        if not self.finished:
            self.finished = True
            self.done(response, error)


class _Factory(protocol.ClientFactory):
    noisy = False  # no "Starting factory" line per download

    def __init__(self, request: bytes, done: Callable, failed: Callable[[Any], None] | None = None) -> None:
        self.request = request
        self.done = done
        self.failed = failed

    def buildProtocol(self, addr: Any) -> _Get:
        return _Get(self.request, self.done)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if self.failed is not None:
            self.failed(reason)


SWEEP = 0.05  # seconds between timeout sweeps: a request times out at most this late


def _reason(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if code == errno.ETIMEDOUT:
        return "connect timed out"
    return os.strerror(code)


class _Plain:
    """One plain-HTTP GET on a non-blocking socket, as the reactor's own reader and writer:
    connect, write the request, read until the server closes, parse."""

    __slots__ = ("client", "sock", "fd", "request", "done", "buffer", "deadline", "finished", "connected")

    def __init__(self, client: "Client", sock: socket.socket, request: bytes,
                 done: Callable[[HttpResponse | None, str | None], None], deadline: float) -> None:
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.request = request
        self.done = done
        self.buffer = bytearray()
        self.deadline = deadline
        self.finished = False
        self.connected = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "pnp-simulate-http"

    def doWrite(self) -> None:
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return self._end(None, _reason(code))
            self.connected = True
        try:
            sent = self.sock.send(self.request)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return self._end(None, _reason(exc.errno or 0))
        self.request = self.request[sent:]
        if not self.request:
            # Sent: from now on only the answer matters.
            reactor = self.client.reactor
            reactor.removeWriter(self)
            reactor.addReader(self)
        return None

    def doRead(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                # A reset after the answer: what arrived is still the answer (or too short).
                return self._closed()
            if not chunk:
                return self._closed()
            self.buffer += chunk
            if len(self.buffer) > MAX_RESPONSE:
                return self._end(None, f"response larger than {MAX_RESPONSE} bytes")

    def connectionLost(self, reason: Any = None) -> None:
        """The reactor saw a hang-up (or one of our calls raised)."""
        if self.finished:
            return
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            text = str(getattr(reason, "value", reason) or "connection lost").strip().splitlines()
            self._end(None, _reason(code) if code else (text[0][:200] if text else "connection lost"))
        else:
            self._closed()

    def _closed(self) -> None:
        try:
            response = parse_response(bytes(self.buffer))
        except HttpError as exc:
            return self._end(None, str(exc))
        return self._end(response, None)

    def _end(self, response: HttpResponse | None, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        reactor = self.client.reactor
        # Unwatched before closed: the reactor finds a descriptor by its number.
        reactor.removeReader(self)
        reactor.removeWriter(self)
        self.sock.close()
        self.fd = -1
        self.client._ended()
        self.done(response, error)


class Client:
    """The GETs of a whole fleet on one reactor, each bounded by ``timeout`` seconds."""

    def __init__(self, reactor: Any, timeout: float, trust: Any = None) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.trust = trust
        self.in_flight = 0
        # Same timeout for all, so deadlines come in the order requests were made: the oldest
        # is always first, and a sweep stops at the first one not yet due.
        self._pending: collections.deque[_Plain] = collections.deque()
        self._sweep_call: Any = None

    def get(self, url: str, headers: dict[str, str], bind_ip: str,
            done: Callable[[HttpResponse | None, str | None], None]) -> None:
        """GET ``url`` over a new connection from ``bind_ip``; ``done(response, None)`` or
        ``done(None, reason)`` is called exactly once, never before this returns."""
        target = _target(url)
        reactor = self.reactor
        if not target.fetchable or target.port is None:
            reactor.callLater(0, done, None, f"cannot fetch {url!r}")
            return
        if not on_loopback(target.host):
            # NETWORK-SAFETY.md: simulated phones talk to this host only.
            reactor.callLater(0, done, None, f"refusing to fetch from {target.host}: not a 127.0.0.0/8 address")
            return
        if target.scheme == "https":
            _get_tls(reactor, urlsplit(url), url, headers, bind_ip, self.timeout, done, self.trust)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((bind_ip, 0))
            code = sock.connect_ex((target.host, target.port))
        except OSError as exc:
            sock.close()
            reactor.callLater(0, done, None, _reason(exc.errno or 0))
            return
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EINTR):
            sock.close()
            reactor.callLater(0, done, None, _reason(code))
            return
        request = build_request(url, headers)
        get = _Plain(self, sock, request, done, reactor.seconds() + self.timeout)
        self.in_flight += 1
        self._pending.append(get)
        if self._sweep_call is None:
            self._sweep_call = reactor.callLater(self.timeout, self._sweep)
        # On loopback the handshake is done before connect() returns, unless the server's
        # listen queue is full: so send at once, and wait for the connection only when that
        # says so (a reactor round and two epoll changes fewer per download).
        try:
            sent = sock.send(request)
        except (BlockingIOError, InterruptedError):
            reactor.addWriter(get)  # writable once connected (or failed: SO_ERROR says why)
            return
        except OSError as exc:
            reactor.callLater(0, get._end, None, _reason(exc.errno or 0))  # done() never runs inside get()
            return
        get.connected = True
        get.request = request[sent:]
        if get.request:
            reactor.addWriter(get)
        else:
            reactor.addReader(get)

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.reactor.seconds()
        pending = self._pending
        while pending and (pending[0].finished or pending[0].deadline <= now):
            get = pending.popleft()
            if not get.finished:
                get._end(None, "timed out")
        if pending and self._sweep_call is None:  # a done() above may have armed one already
            self._sweep_call = self.reactor.callLater(max(SWEEP, pending[0].deadline - now), self._sweep)

    def _ended(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:  # nothing left to time out: no timer left behind either
            self._pending.clear()
            self.close()

    def close(self) -> None:
        """Stop sweeping; requests still in flight (the run is over) are hung up on, unanswered."""
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        while self._pending:
            get = self._pending.popleft()
            if not get.finished:
                get.finished = True
                self.reactor.removeReader(get)
                self.reactor.removeWriter(get)
                get.sock.close()
                get.fd = -1
        self.in_flight = 0


def get(reactor: Any, url: str, headers: dict[str, str], bind_ip: str, timeout: float,
        done: Callable[[HttpResponse | None, str | None], None], trust: Any = None) -> None:
    """One GET with a client of its own (see :meth:`Client.get`)."""
    Client(reactor, timeout, trust).get(url, headers, bind_ip, done)


def _get_tls(reactor: Any, parts: Any, url: str, headers: dict[str, str], bind_ip: str, timeout: float,
             done: Callable[[HttpResponse | None, str | None], None], trust: Any = None) -> None:
    """HTTPS through Twisted's TLS endpoint (rare in a storm, so its cost does not matter)."""
    port = parts.port or 443
    state: dict[str, Any] = {"finished": False}

    def finish(response: HttpResponse | None, error: str | None) -> None:
        if state["finished"]:
            return
        state["finished"] = True
        call = state.get("timer")
        if call is not None and call.active():
            call.cancel()
        done(response, error)

    def timed_out() -> None:
        proto = state.get("proto")
        finish(None, "timed out")
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()
        connecting = state.get("connecting")
        if connecting is not None:
            connecting.cancel()

    def failed(failure: Any) -> None:
        state["connecting"] = None
        if failure.check(terror.ConnectionRefusedError):
            finish(None, "connection refused")
        elif failure.check(terror.TimeoutError, terror.UserError) or "timeout" in str(failure.value).lower():
            finish(None, "connect timed out")
        elif failure.check(Exception):
            text = str(failure.value).strip() or failure.type.__name__
            finish(None, text.splitlines()[0][:200])

    state["timer"] = reactor.callLater(timeout, timed_out)
    request = build_request(url, headers)
    options = optionsForClientTLS(parts.hostname, trustRoot=trust) if trust else optionsForClientTLS(parts.hostname)
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, parts.hostname, port, timeout=timeout,
                                                         bindAddress=(bind_ip, 0)))
    d = endpoint.connect(_Factory(request, finish))

    def connected(proto: _Get) -> None:
        state["connecting"] = None
        state["proto"] = proto

    state["connecting"] = d
    d.addCallbacks(connected, failed)
