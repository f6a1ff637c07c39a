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


def test_what_a_read_s_handlers_publish_goes_out_at_its_end_and_a_remainder_later():
    """A read's PUBACKs and the handlers' publishes are written when the read ends, without
    asking the reactor to watch for writability; what the socket does not take then is
    written once it is writable again, nothing left behind."""
    import socket

    from paho.mqtt.enums import _ConnectionState
    from twisted.internet.epollreactor import EPollReactor

    poller = EPollReactor()  # never run: its registrations are what is checked
    bus = Bus(parse_mqtt_url("mqtt://127.0.0.1:1"), "test-write", poller)
    mine, broker = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    mine.setblocking(False)
    client = bus._client
    client._sock, client._state = mine, _ConnectionState.MQTT_CS_CONNECTING
    bus._on_socket_open(client, None, mine)
    bus.connected = True
    big = b"x" * 200_000
    answers = []

    def handler(msg) -> None:
        answers.append(msg.raw)
        bus.publish("t/answer", big if msg.raw == b"big" else b"small")

    bus.subscribe("t/ask", handler)
    client._out_packet.clear()  # the SUBSCRIBE: not what this test reads back
    reader = bus._reader

    def ask(payload: bytes, mid: int) -> None:
        body = b"\x00\x05t/ask" + mid.to_bytes(2, "big") + b"\x00" + payload
        broker.sendall(bytes((0x32, len(body))) + body)

    ask(b"one", 1)
    reader.doRead()
    assert answers == [b"one"]
    assert reader not in poller.getWriters(), "watched for writability with nothing left"
    broker.setblocking(False)
    written = broker.recv(1 << 20)
    # the handler's answer, then the PUBACK (queued once the handler returned, as paho does)
    assert written.startswith(b"\x32") and b"t/answer" in written
    assert written.endswith(b"small\x40\x02\x00\x01"), written
    ask(b"big", 2)
    reader.doRead()
    assert reader in poller.getWriters(), "a partly written answer left without a writer"
    got = bytearray()
    while client.want_write() or reader in poller.getWriters():
        try:
            got += broker.recv(1 << 20)
        except BlockingIOError:
            pass
        reader.doWrite()
    while True:
        try:
            chunk = broker.recv(1 << 20)
        except BlockingIOError:
            break
        got += chunk
    assert bytes(got).endswith(big + b"\x40\x02\x00\x02"), "the answer or its PUBACK cut short"
    mine.close()
    broker.close()


def test_a_batch_s_publishes_leave_at_its_end_at_once_and_a_remainder_through_the_writer():
    """Outside a read, publishes made in ``Bus.batch`` are written when it ends, in order,
    without the reactor being asked to watch the socket; what the socket does not take then
    is written once it is writable again."""
    import socket

    from paho.mqtt.enums import _ConnectionState
    from twisted.internet.epollreactor import EPollReactor

    poller = EPollReactor()  # never run: its registrations are what is checked
    bus = Bus(parse_mqtt_url("mqtt://127.0.0.1:1"), "test-batch", poller)
    mine, broker = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    mine.setblocking(False)
    broker.setblocking(False)
    client = bus._client
    client._sock, client._state = mine, _ConnectionState.MQTT_CS_CONNECTING
    bus._on_socket_open(client, None, mine)
    bus.connected = True
    reader = bus._reader

    def received() -> bytes:
        got = bytearray()
        while True:
            try:
                got += broker.recv(1 << 20)
            except BlockingIOError:
                return bytes(got)

    with bus.batch():
        for i in range(3):
            bus.publish(f"t/{i}", b"small")
        assert received() == b"", "written before the batch ended"
    assert reader not in poller.getWriters(), "watched for writability with nothing left"
    written = received()
    at = [written.find(f"t/{i}".encode()) for i in range(3)]
    assert -1 not in at and at == sorted(at) and written.count(b"small") == 3
    big = b"x" * 200_000
    with bus.batch():
        bus.publish("t/big", big)
        bus.publish("t/after", b"last")
    assert reader in poller.getWriters(), "a partly written batch left without a writer"
    got = bytearray(received())
    while client.want_write():
        reader.doWrite()
        got += received()
    assert big in got and got.index(big) < got.index(b"t/after") and got.endswith(b"last"), (
        "the batch cut short or reordered")
    mine.close()
    broker.close()
