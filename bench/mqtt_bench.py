"""CPU per MQTT message in the bus (services/mqtt/), in-process, no broker, no network.

The bus's paho client gets one end of a socket pair; the bench plays the broker on the other:
it writes PUBLISH packets (as mosquitto forwards them) or PUBACKs, and reads back what the
client sends. Only the client's work is timed (``time.process_time`` around the calls the
reactor would make: ``SocketAdapter.doRead``/``doWrite`` and ``Bus.publish``), best of N rounds.

- ``recv-q1``: a QoS 1 message received (decode, handler call, PUBACK queued and written);
- ``recv-q1-expiry``: the same carrying a Message Expiry Interval (as a discovery does);
- ``recv-q0``: a QoS 0 message received;
- ``recv-q1-8filters``: ``recv-q1`` on a bus with the fileserver's eight filters;
- ``recv-q1-alone``: ``recv-q1``, one message per read (a quiet service: a wakeup each);
- ``publish-q1``: a retained QoS 1 publish: ``Bus.publish``, its write, its PUBACK read back;
- ``publish-q1-expiry``: the same with an expiry.
- ``publish-alone``: one retained QoS 1 publish with an expiry outside a read (the listener's
  discovery at 500 phones/s: a turn each), written when the reactor reports the socket
  writable (``doWrite``; the epoll_ctl pair counted, the poll round between not), then its
  PUBACK read alone (a wakeup of its own);
- ``publish-alone-batch``: the same published in ``Bus.batch()``: written as the batch ends.

    .venv/bin/python bench/mqtt_bench.py [--count 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paho.mqtt.enums import _ConnectionState  # noqa: E402

from services.mqtt import Bus, Incoming  # noqa: E402
from services.mqtt.paho_internals import remaining_length  # noqa: E402
from services.settings import parse_mqtt_url  # noqa: E402

TOPIC = "pnp/devices/000b82f55284/fetched"
PAYLOAD = (b'{"at":"2026-12-07T05:55:07.123Z","file":"000b82f55284.cfg","instance":"fs-1",'
           b'"ip":"10.0.0.17","mac":"000b82f55284","status":200,"ua":"Yealink SIP-T46S 66.86"}')
BATCH = 256  # packets written by the "broker" before the client reads them


def Reactor() -> Any:
    """A real epoll reactor, never run: its readers and writers cost the epoll_ctl calls a
    service pays, and nothing polls them."""
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def publish_packet(topic: str, payload: bytes, qos: int, mid: int, retain: bool = False,
                   properties: bytes = b"") -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"")
    body += remaining_length(len(properties)) + properties + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + remaining_length(len(body)) + body


def make_bus() -> tuple[Bus, socket.socket, Any]:
    reactor = Reactor()
    bus = Bus(parse_mqtt_url("mqtt://127.0.0.1:1"), "bench", reactor)
    mine, broker = socket.socketpair()
    mine.setblocking(False)
    client = bus._client
    client._sock = mine
    client._state = _ConnectionState.MQTT_CS_CONNECTING  # enough for its reads and writes
    bus._on_socket_open(client, None, mine)
    bus.connected = True
    return bus, broker, reactor


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass
    sock.setblocking(True)


# what the fileserver subscribes to (the refill's and the keeper's included)
FILESERVER_FILTERS = ["pnp/devices/+/published", "pnp/devices/+/files", "pnp/devices/+/enrolment",
                      "pnp/devices/+/config", "pnp/devices/+/discovered", "pnp/devices/+/error",
                      "pnp/services/fileserver/fs-1/retained"]


def bench_receive(count: int, qos: int, properties: bytes, others: list[str] = [],
                  batch: int = BATCH) -> float:
    bus, broker, _ = make_bus()
    got = [0]

    def handler(msg: Incoming) -> None:
        got[0] += 1

    bus._subs.clear()
    for other in others:
        bus.subscribe(other, lambda msg: None, qos=1)
    bus.subscribe("pnp/devices/+/fetched", handler, qos=1)
    adapter = bus._reader
    assert adapter is not None
    packets = [publish_packet(TOPIC, PAYLOAD, qos, 1 + i % 60000, properties=properties)
               for i in range(batch)]
    data = b"".join(packets)
    cpu = 0.0
    for _ in range(count // batch):
        broker.sendall(data)
        want = got[0] + batch
        start = time.process_time()
        while got[0] < want:
            adapter.doRead()
        cpu += time.process_time() - start
        drain(broker)
    broker.close()
    return cpu / (count // batch * batch)


def bench_publish(count: int, expiry: int | None) -> float:
    bus, broker, _ = make_bus()
    adapter = bus._reader
    assert adapter is not None
    client = bus._client
    cpu = 0.0
    for _ in range(count // BATCH):
        start = time.process_time()
        for i in range(BATCH):
            bus.publish(TOPIC, PAYLOAD, retain=True, expiry=expiry)
        adapter.doWrite()
        cpu += time.process_time() - start
        mids = list(client._out_messages)
        drain(broker)
        broker.sendall(b"".join(bytes((0x40, 2, mid >> 8, mid & 255)) for mid in mids))
        start = time.process_time()
        while client._out_messages:
            adapter.doRead()
        cpu += time.process_time() - start
    broker.close()
    return cpu / (count // BATCH * BATCH)


def bench_publish_alone(count: int, batched: bool) -> float:
    bus, broker, _ = make_bus()
    adapter = bus._reader
    assert adapter is not None
    client = bus._client
    cpu = 0.0
    for _ in range(count):
        start = time.process_time()
        if batched:
            with bus.batch():
                bus.publish(TOPIC, PAYLOAD, retain=True, expiry=300)
        else:
            bus.publish(TOPIC, PAYLOAD, retain=True, expiry=300)
            adapter.doWrite()  # what the reactor calls once the socket is reported writable
        cpu += time.process_time() - start
        mid = next(iter(client._out_messages))
        drain(broker)
        broker.sendall(bytes((0x40, 2, mid >> 8, mid & 255)))
        start = time.process_time()
        adapter.doRead()
        cpu += time.process_time() - start
        assert not client._out_messages
    broker.close()
    return cpu / count


CASES: dict[str, Callable[[int], float]] = {
    "recv-q1": lambda n: bench_receive(n, 1, b""),
    "recv-q1-expiry": lambda n: bench_receive(n, 1, b"\x02" + struct.pack("!I", 300)),
    "recv-q0": lambda n: bench_receive(n, 0, b""),
    "recv-q1-8filters": lambda n: bench_receive(n, 1, b"", FILESERVER_FILTERS),
    "recv-q1-alone": lambda n: bench_receive(n, 1, b"", batch=1),
    "publish-q1": lambda n: bench_publish(n, None),
    "publish-q1-expiry": lambda n: bench_publish(n, 300),
    "publish-alone": lambda n: bench_publish_alone(n, False),
    "publish-alone-batch": lambda n: bench_publish_alone(n, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    for name in args.cases:
        best = min(CASES[name](args.count) for _ in range(args.rounds))
        print(f"{name:20s} {best * 1e6:7.2f} us CPU per message (best of {args.rounds}, {args.count} messages)")


if __name__ == "__main__":
    main()
