"""The bus's non-blocking connect (services/mqtt/connect.py)."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from services.mqtt import Bus
from services.settings import parse_mqtt_url


class UnansweredConnectTest(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_broker_that_never_answers_does_not_stall_the_reactor(self):
        # A listening socket whose accept queue is full drops further SYNs: a connect to it hangs,
        # as one to a broker behind a dead route would. Meanwhile the service must keep working
        # (the listener answers phones while the broker is away).
        import socket as _socket

        from services.broker import free_port

        server = _socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", free_port()))
        server.listen(0)
        fillers = []
        for _ in range(4):
            c = _socket.socket()
            c.setblocking(False)
            c.connect_ex(server.getsockname())
            fillers.append(c)
        self.addCleanup(lambda: [c.close() for c in fillers])
        host, port = server.getsockname()
        b = Bus(parse_mqtt_url(f"mqtt://{host}:{port}"), "test-hang", reactor, connect_timeout=1.0,
                backoff_initial=0.05)
        self.addCleanup(b.stop)
        ticks = []
        from twisted.internet import task
        import time as _time

        loop = task.LoopingCall(lambda: ticks.append(_time.monotonic()))
        loop.start(0.02)
        self.addCleanup(loop.stop)
        b.start()
        yield task.deferLater(reactor, 1.5, lambda: None)
        gaps = [b2 - a for a, b2 in zip(ticks, ticks[1:])]
        self.assertFalse(b.connected)
        self.assertLess(max(gaps), 0.5, f"the reactor stalled for {max(gaps):.2f}s")
