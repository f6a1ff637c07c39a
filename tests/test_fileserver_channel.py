"""FileRequest (fileserver/channel.py) answers a file at once, with the bytes Twisted's own
request path writes for the same answer: compared over real TCP, response by response."""

from __future__ import annotations

import re
import socket

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.http_headers import Headers

from fileserver.channel import FileRequest, FileSite, answer
from fileserver.files import ServedFile

FILE = ServedFile.make("cfg000b82f55284.xml", "application/xml", b"<config>" + b"x" * 3000 + b"</config>\n",
                       "ab" * 32)


class OneFile(resource.Resource):
    """Answers every path with FILE: a 304 when asked with If-None-Match, else a 200."""

    isLeaf = True

    def render(self, request: server.Request) -> int:
        request.setHeader(b"server", b"pnp")
        if request.getHeader(b"if-none-match"):
            answer(request, 304, ((b"ETag", b'"' + b"ab" * 32 + b'"'), (b"Cache-Control", b"no-store")),
                   FILE.head_304, b"")
        else:
            answer(request, 200, FILE.headers + ((b"Content-Length", FILE.length),), FILE.head, FILE.body)
        return server.NOT_DONE_YET


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes; the Date (a clock) masked."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return re.sub(rb"Date: [^\r]+", b"Date: -", out)


REQUESTS = {
    "GET": b"GET /p/x/cfg.xml HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "GET 1.0": b"GET /p/x/cfg.xml HTTP/1.0\r\n\r\n",
    "HEAD": b"HEAD /p/x/cfg.xml HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "304": b"GET /p/x/cfg.xml HTTP/1.1\r\nHost: h\r\nIf-None-Match: x\r\nConnection: close\r\n\r\n",
    "HEAD 304": b"HEAD /c/cfg.xml?a=b HTTP/1.1\r\nHost: h\r\nIf-None-Match: x\r\nConnection: close\r\n\r\n",
    "two on one connection": b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                             b"GET /b HTTP/1.1\r\nHost: h\r\nIf-None-Match: x\r\nConnection: close\r\n\r\n",
}


class FileRequestTest(unittest.TestCase):
    def listen(self, site: server.Site) -> int:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_the_answer_at_once_is_what_twisteds_own_way_writes(self) -> None:
        lean = self.listen(FileSite(OneFile(), head_timeout=5, refused=lambda status: None))
        plain = self.listen(server.Site(OneFile()))
        for name, request in REQUESTS.items():
            ours = yield threads.deferToThread(exchange, lean, request)
            twisted = yield threads.deferToThread(exchange, plain, request)
            self.assertEqual(ours, twisted, name)
            self.assertIn(b"Server: pnp\r\n", ours, name)
        self.assertEqual(ours.count(b"HTTP/1.1 "), 2)
        head = yield threads.deferToThread(exchange, lean, REQUESTS["HEAD"])
        self.assertTrue(head.endswith(b"Content-Length: %d\r\n\r\n" % len(FILE.body)), head)

    def test_a_request_not_in_the_plain_state_is_answered_twisteds_way(self) -> None:
        class Request(FileRequest):
            def __init__(self) -> None:  # no channel: only the state answer() looks at
                self.startedWriting = 0
                self._disconnected = False
                self.cookies = []
                self.etag = None
                self.lastModified = None
                self.responseHeaders = Headers()

        request = Request()
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
        self.assertFalse(request.answer(200, FILE.head, FILE.body))  # it would send Content-Type twice
        request.responseHeaders.removeHeader(b"content-type")
        request.cookies = [b"a=b"]
        self.assertFalse(request.answer(200, FILE.head, FILE.body))
