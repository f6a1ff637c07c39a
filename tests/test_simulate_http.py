"""The phones' HTTP/1.1 response reader: every framing a server may use, and broken answers."""

from __future__ import annotations

import pytest
from twisted.internet import defer, protocol as tprotocol, reactor as _reactor, task
from twisted.trial import unittest as trial

from tools.simulate.http import HttpError, build_request, parse_response


def test_request_is_one_get_with_host_and_close():
    raw = build_request("http://127.0.0.1:8080/p/tok/cfg.xml?x=1", {"User-Agent": "Grandstream", "If-None-Match": '"ab"'})
    assert raw == (b"GET /p/tok/cfg.xml?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Grandstream\r\n"
                   b'If-None-Match: "ab"\r\nConnection: close\r\n\r\n')
    assert b"Host: example.com\r\n" in build_request("https://example.com:443/", {})


def test_content_length_chunked_and_close_delimited_bodies():
    r = parse_response(b'HTTP/1.1 200 OK\r\nETag: "ab"\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello')
    assert (r.status, r.body, r.headers["etag"], r.headers["x-a"]) == (200, b"hello", '"ab"', "1, 2")
    r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert r.body == b"hello world"
    assert parse_response(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close").body == b"until close"
    assert parse_response(b'HTTP/1.1 304 Not Modified\r\nETag: "ab"\r\n\r\n').body == b""


@pytest.mark.parametrize("raw", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n", b"garbage\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n"])
def test_broken_responses_raise_http_error_only(raw):
    with pytest.raises(HttpError):
        parse_response(raw)


def test_only_loopback_literals_are_fetched():
    from twisted.internet.task import Clock

    from tools.simulate.http import get, on_loopback

    assert on_loopback("127.0.0.1") and on_loopback("127.45.3.2")
    assert not on_loopback("10.0.0.1") and not on_loopback("localhost") and not on_loopback("pbx.example.com")
    clock, got = Clock(), []
    get(clock, "http://192.168.5.110:8080/p/x/", {}, "127.0.0.2", 1.0, lambda r, e: got.append((r, e)))
    clock.advance(0)
    assert got == [(None, "refusing to fetch from 192.168.5.110: not a 127.0.0.0/8 address")]


class _Answer(tprotocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.transport.loseConnection()


class GetTest(trial.TestCase):
    """One GET per connection from the phone's address: an answer, a refusal, a silent server."""

    def _get(self, port: int, timeout: float = 5.0) -> defer.Deferred:
        from tools.simulate.http import get

        d: defer.Deferred = defer.Deferred()
        get(_reactor, f"http://127.0.0.1:{port}/cfg.xml", {"User-Agent": "t"}, "127.0.0.2", timeout,
            lambda r, e: d.callback((r, e)))
        return d

    def _listen(self, proto: type) -> int:
        factory = tprotocol.Factory.forProtocol(proto)
        port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_answer_refusal_and_silence(self):
        response, error = yield self._get(self._listen(_Answer))
        assert error is None and (response.status, response.body) == (200, b"ok")
        closed = _reactor.listenTCP(0, tprotocol.Factory.forProtocol(tprotocol.Protocol), interface="127.0.0.1")
        free = closed.getHost().port
        yield closed.stopListening()
        assert (yield self._get(free)) == (None, "connection refused")
        silent: list = []

        class Silent(tprotocol.Protocol):
            def connectionMade(self) -> None:
                silent.append(self)

        response, error = yield self._get(self._listen(Silent), timeout=0.3)
        assert (response, error) == (None, "timed out")
        yield task.deferLater(_reactor, 0.1, lambda: None)
        assert silent and not silent[0].transport.connected  # the phone hung up


    @defer.inlineCallbacks
    def test_one_client_for_many_phones_answers_each_and_times_out_only_the_silent(self):
        """A fleet's client: each GET gets its own answer from its own address; the one whose
        server never answers times out; the others are not held up by it."""
        from tools.simulate.http import Client

        silent: list = []

        class Silent(tprotocol.Protocol):
            def connectionMade(self) -> None:
                silent.append(self)

        seen: list = []

        class Echo(tprotocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    peer = self.transport.getPeer().host.encode()
                    seen.append(peer)
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(peer), peer))
                    self.transport.loseConnection()

        client = Client(_reactor, 0.3)
        answers = [defer.Deferred() for _ in range(5)]
        quiet: defer.Deferred = defer.Deferred()
        client.get(f"http://127.0.0.1:{self._listen(Silent)}/x", {}, "127.0.0.9", lambda r, e: quiet.callback((r, e)))
        echo = self._listen(Echo)
        for i, d in enumerate(answers):
            client.get(f"http://127.0.0.1:{echo}/cfg{i}.xml", {}, f"127.0.0.{20 + i}",
                       lambda r, e, d=d: d.callback((r, e)))
        got = yield defer.gatherResults(answers)
        assert [(r.status, r.body, e) for r, e in got] == [(200, f"127.0.0.{20 + i}".encode(), None) for i in range(5)]
        assert (yield quiet) == (None, "timed out")
        assert client.in_flight == 0
        yield task.deferLater(_reactor, 0.1, lambda: None)
        assert silent and not silent[0].transport.connected
