"""paho's private attributes the bus relies on (services/mqtt/paho_internals.py), checked
against the installed paho, which must be in the range pyproject.toml declares. A paho release
that changes one of them fails here, by name, before a service meets it at run time."""

from __future__ import annotations

import socket
import tomllib
from collections import deque
from pathlib import Path

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from packaging.requirements import Requirement
from packaging.version import Version

from services.mqtt import make_client, paho_internals
from services.mqtt.coalesce import join_packets
from services.mqtt.paho_internals import (
    PACKET_KEYS,
    ReadySocketClient,
    has_connect_settings,
    in_callback,
    packet_reader,
    send_queue,
    unacknowledged,
    unacknowledged_topic,
)
from services.settings import parse_mqtt_url
from tests.support import Probe, wait_until

PAHO = f"paho-mqtt {paho.mqtt.__version__}"


def declared_paho() -> Requirement:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "paho-mqtt"]
    assert len(found) == 1, "pyproject.toml must declare paho-mqtt once"
    return found[0]


def test_the_installed_paho_is_in_the_range_these_checks_were_written_for():
    requirement = declared_paho()
    # The range is what paho_internals.py was checked against: widening it means running this
    # module against the new versions first.
    assert str(requirement.specifier) == "<3,>=2.1", requirement
    assert Version(paho.mqtt.__version__) in requirement.specifier, (PAHO, str(requirement))


def connected(broker, properties: Properties | None = None, name: str = "internals",
              inflight: int = 20) -> ReadySocketClient:
    """A client connected the bus's way: our socket, paho's reconnect, reads driven by hand.
    ``inflight``: paho's cap on unacknowledged messages (its default; the bus has none, 0)."""
    url = parse_mqtt_url(broker.url)
    client = make_client(url, name, ReadySocketClient)
    client.max_inflight_messages_set(inflight)
    done: list = []
    client.on_connect = lambda *args: done.append((*args, in_callback(client)))
    # an external event loop, as the bus's: paho then queues packets instead of sending at once
    client.on_socket_register_write = lambda *args: None
    assert not has_connect_settings(client), f"{PAHO}: Client._host set before connect_async"
    client.connect_async(url.host, url.port, properties=properties)
    assert has_connect_settings(client), f"{PAHO}: Client._host not set by connect_async"
    sock = socket.create_connection((url.host, url.port))
    client.hand_socket(sock)
    client.reconnect()
    assert client.socket() is sock, (
        f"{PAHO}: reconnect no longer takes its socket from Client._create_socket_connection")
    client.loop_write()
    steps = packet_reader(client)
    assert steps is not None, f"{PAHO}: Client._packet_read or Client._loop_rc_handle is gone"
    read_packet, handle_rc = steps
    sock.settimeout(5)
    while not done:
        rc = read_packet()
        assert rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN), (
            f"{PAHO}: Client._packet_read returned {rc!r} reading the CONNACK")
        handle_rc(rc)
    assert not done[0][3].is_failure
    assert done[0][5] and not in_callback(client), (
        f"{PAHO}: Client._in_callback_mutex is not held exactly while a callback runs")
    return client


def test_a_handed_socket_connects_and_packets_are_read_one_by_one(broker):
    client = connected(broker)
    client.disconnect()


def test_unacknowledged_messages_are_counted_and_named_by_mid(broker):
    client = make_client(parse_mqtt_url(broker.url))
    info = client.publish("t/queued", b"1", qos=1)  # not connected: held until a connection
    assert unacknowledged(client) == 1, f"{PAHO}: Client._out_messages does not hold QoS 1 messages"
    assert unacknowledged_topic(client, info.mid) == "t/queued", f"{PAHO}: Client._out_messages by mid"
    assert unacknowledged_topic(client, info.mid + 1) == "?"


def test_the_send_queue_holds_packets_of_the_shape_joining_relies_on(broker, probe):
    client = connected(broker)
    for i in range(3):
        client.publish(f"t/{i}", str(i).encode(), qos=1)
    queue = send_queue(client)
    assert isinstance(queue, deque) and len(queue) == 3, f"{PAHO}: Client._out_packet is not a deque of packets"
    for packet in queue:
        assert set(packet) == PACKET_KEYS, f"{PAHO}: a queued packet has keys {sorted(packet)}"
    join_packets(client)
    assert len(queue) == 1
    while client.want_write():
        client.loop_write()
    # paho sent the joined buffer as one packet, forgot it, and the broker read three publishes
    wait_until(lambda: [t for t, _, _ in probe.messages if t.startswith("t/")] == ["t/0", "t/1", "t/2"])
    client.disconnect()


def test_a_plain_puback_is_acknowledged_without_decoding_reason_and_properties(broker):
    from services.mqtt import paho_internals

    client = connected(broker)
    acked: list = []
    client.on_publish = lambda c, userdata, mid, reason, properties: acked.append((mid, reason, properties))
    # the first with no subscriber (mosquitto says so in the PUBACK), then plain successes
    client.subscribe("t/#", qos=1)
    infos = [client.publish("u/0", b"x", qos=1)] + [client.publish(f"t/{i}", b"x", qos=1) for i in range(2)]
    while client.want_write():
        client.loop_write()
    read_packet, handle_rc = packet_reader(client)
    while len(acked) < 3:
        handle_rc(read_packet())
    assert [mid for mid, _, _ in acked] == [i.mid for i in infos]
    # mosquitto's PUBACKs took the short way (the shared objects), and paho's own bookkeeping
    # after it still ran: nothing left unacknowledged, every message published
    shared = paho_internals._PUBACK_ACCEPTED
    assert [r for _, r, _ in acked] == [shared[16], shared[0], shared[0]], (
        f"{PAHO} or the broker: PUBACKs not handled by ReadySocketClient._handle_pubackcomp: {acked}")
    assert all(r is shared[r.value] and not r.is_failure for _, r, _ in acked)
    assert unacknowledged(client) == 0 and all(i.is_published() for i in infos)
    client.disconnect()


class CountingSocket:
    """A socket that counts its ``recv`` calls (paho's one way of reading)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self._sock.recv(size)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fast"])
def test_packets_that_arrived_together_are_read_with_one_recv(broker, fast):
    client = connected(broker)
    counting = CountingSocket(client._sock)
    client._sock = counting
    acked: list = []
    got: list = []
    client.on_publish = lambda c, userdata, mid, reason, properties: acked.append(mid)
    client.on_message = lambda c, userdata, message: got.append(message.payload)
    if fast:  # whole packets in the buffer read without paho; the rest (split ones) with it
        client.on_fast_message = lambda topic, payload, retain: got.append(payload)
    client.subscribe("t/#", qos=1)
    # many PUBACKs, and messages larger than one read, split across the reads
    payloads = [bytes([65 + i % 26]) * (1 if i % 2 else 70_000 + i) for i in range(40)]
    for p in payloads:
        client.publish("t/x", p, qos=1)
    while client.want_write():
        client.loop_write()
    read_packet, handle_rc = packet_reader(client)
    while len(acked) < 40 or len(got) < 40:
        handle_rc(read_packet())
        while client.want_write():
            client.loop_write()  # the PUBACKs of what we received
    assert got == payloads, "a message came back changed: the buffered reads lost or reordered bytes"
    # paho alone needs three recv calls a packet (type, length, rest): 240 here
    assert counting.recvs < 120, (f"{PAHO}: {counting.recvs} recv calls for 80 packets; "
                                  "ReadySocketClient._sock_recv no longer reads them together?")
    client.disconnect()


def test_after_a_short_read_the_socket_is_not_asked_again_until_it_is_readable(broker):
    """A PUBACK comes alone: the recv that read it took all the socket had, and asking again
    would only raise "would block". The read says "again" at once, without a system call; the
    next read (the socket reported readable) asks the socket, and nothing is missed."""
    import select

    client = connected(broker)
    client._sock.setblocking(False)  # as paho leaves it under an event loop
    counting = CountingSocket(client._sock)
    client._sock = counting
    acked: list = []
    client.on_publish = lambda c, userdata, mid, reason, properties: acked.append(mid)
    read_packet, handle_rc = packet_reader(client)
    for round_ in range(3):
        info = client.publish(f"t/{round_}", b"x", qos=1)
        while client.want_write():
            client.loop_write()
        assert select.select([counting._sock], [], [], 5)[0], "no PUBACK from the broker"
        before = counting.recvs
        assert read_packet() == mqtt.MQTT_ERR_SUCCESS and acked[-1] == info.mid
        assert read_packet() == mqtt.MQTT_ERR_AGAIN
        assert counting.recvs == before + 1, "the socket was asked again after a short read"
    # a caller that asks once more anyway (no readiness in between) gets the socket's answer
    assert read_packet() == mqtt.MQTT_ERR_AGAIN and counting.recvs == before + 2
    assert acked == sorted(acked) and len(acked) == 3 and unacknowledged(client) == 0
    client.disconnect()


@pytest.mark.parametrize("name", ["_create_socket_connection", "_packet_read", "_loop_rc_handle",
                                  "_handle_pubackcomp", "_do_on_publish", "_sock_recv",
                                  "_packet_queue", "_easy_log"])
def test_the_private_methods_still_exist(name):
    assert callable(getattr(mqtt.Client, name, None)), f"{PAHO}: Client.{name} is gone"


def test_the_private_state_the_fast_read_uses_is_there(broker):
    # paho's keepalive reads this stamp: the fast read sets it, or paho would ping a busy
    # connection and close it for silence. Asked of a client none of our code touched (the
    # fast read would make the attribute itself, whatever its name).
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert isinstance(getattr(plain, paho_internals._RECEIVED_STAMP, None), float), (
        f"{PAHO}: Client.{paho_internals._RECEIVED_STAMP} is not paho's 'bytes last received'")
    assert getattr(plain, "_registered_write", None) is False, f"{PAHO}: Client._registered_write is gone"
    client = connected(broker)
    assert client._in_packet["command"] == 0, f"{PAHO}: Client._in_packet['command'] is not 0 between packets"
    assert client._manual_ack is False, f"{PAHO}: Client._manual_ack is gone"
    assert client._protocol == mqtt.MQTTv5
    client.disconnect()


def publish_properties(**values) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def test_plain_messages_take_the_fast_way_and_the_rest_paho_s_in_order(broker):
    # the receiver lets the broker send it two unacknowledged messages at a time: all twenty
    # arrive only if each PUBACK went out
    connect = Properties(PacketTypes.CONNECT)
    connect.ReceiveMaximum = 2
    client = connected(broker, connect)
    got: list = []
    queued_while_handled: list = []

    def fast(topic: str, payload: bytes, retain: bool) -> None:
        # paho's order: a message's PUBACK is queued after its handler returned, not before
        queued_while_handled.extend(p["packet"] for p in send_queue(client) if p["command"] == 0x40)
        got.append(("fast", topic, payload, retain, in_callback(client)))

    client.on_fast_message = fast
    client.on_message = lambda c, userdata, m: got.append(("paho", m.topic, m.payload, m.retain, in_callback(client)))
    sender = connected(broker, name="sender")
    sender.publish("t/kept", b"retained", qos=1, retain=True)
    while sender.want_write():
        sender.loop_write()
    read_packet, handle_rc = packet_reader(client)
    client._sock.settimeout(5)
    subscribed: list = []
    client.on_subscribe = lambda *args: subscribed.append(args)
    client.subscribe("t/#", qos=1)
    while not subscribed:
        client.loop_write()
        assert handle_rc(read_packet()) == mqtt.MQTT_ERR_SUCCESS
    kinds = [None, publish_properties(MessageExpiryInterval=300),
             publish_properties(UserProperty=[("a", "b")]), publish_properties(ContentType="x/y")]
    sent = []
    for i in range(20):  # paho holds its 21st unacknowledged message back
        qos, properties = i % 2, kinds[i % 4]
        sender.publish(f"t/{i}", b"p" * i, qos=qos, properties=properties)
        sent.append((f"t/{i}", b"p" * i))
    while sender.want_write():
        sender.loop_write()
    while len(got) < 21:
        assert handle_rc(read_packet()) in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN)
        while client.want_write():
            client.loop_write()
    assert got[0] == ("fast", "t/kept", b"retained", True, True)
    # in order per QoS (the broker sends QoS 0 past QoS 1 messages held by the receive maximum)
    for qos in (0, 1):
        assert [(t, p) for _, t, p, _, _ in got[1:] if int(t[2:]) % 2 == qos] == sent[qos::2], (
            "a message lost, changed or out of order")
    # no property, or only an expiry: fast; any other property: paho's way, as before
    assert [way for way, t, *_ in got[1:]] == [
        "fast" if int(t[2:]) % 4 < 2 else "paho" for _, t, *_ in got[1:]]
    assert all(handled for *_, handled in got), "a handler ran outside paho's callback lock"
    assert queued_while_handled == [], "a PUBACK was queued before its handler returned"
    client.disconnect()
    sender.disconnect()


def test_a_qos1_publish_queues_what_paho_s_own_publish_would(broker):
    client = connected(broker, inflight=0)  # as the bus has it
    expiry = publish_properties(MessageExpiryInterval=300)
    cases = [("t/a", b"x", False, None), ("t/b", b"y" * 200, True, None),
             ("t/c", b"z" * 20000, True, expiry), ("t/\u00e9", b"", False, expiry)]
    queue = send_queue(client)
    for topic, payload, retain, properties in cases:
        ours = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        theirs = mqtt.Client.publish(client, topic, payload, qos=1, retain=retain, properties=properties)
        assert theirs.mid == ours.mid + 1
        mine, paho = queue[-2], queue[-1]
        assert type(mine["packet"]) is bytes  # not paho's bytearray: made here
        assert mine["packet"] == bytes(paho["packet"]).replace(
            theirs.mid.to_bytes(2, "big"), ours.mid.to_bytes(2, "big"), 1), topic
        assert {k: v for k, v in mine.items() if k not in ("packet", "mid", "info")} == {
            k: v for k, v in paho.items() if k not in ("packet", "mid", "info")}
        a, b = client._out_messages[ours.mid], client._out_messages[theirs.mid]
        for field in ("topic", "payload", "qos", "retain", "dup", "state", "properties"):
            assert getattr(a, field) == getattr(b, field), field
        assert a.info is ours and not ours.is_published()
    # the broker takes them, and acknowledges them as paho's own
    while client.want_write():
        client.loop_write()
    read_packet, handle_rc = packet_reader(client)
    client._sock.settimeout(5)
    while unacknowledged(client):
        assert handle_rc(read_packet()) == mqtt.MQTT_ERR_SUCCESS
    assert ours.is_published() and client._inflight_messages == 0
    ours.wait_for_publish(1)  # the shared condition: no wait for one already published
    client.disconnect()


def test_a_publish_paho_would_refuse_or_handle_otherwise_is_paho_s(broker):
    client = connected(broker, inflight=0)
    with pytest.raises(ValueError):
        client.publish("t/+", b"x", qos=1)
    # not bytes, QoS 0: paho's publish, whose packets paho builds as bytearrays
    client.publish("t/s", "text", qos=1)
    client.publish("t/q0", b"x", qos=0)
    assert [type(p["packet"]) for p in send_queue(client)] == [bytearray, bytearray]
    client.disconnect()


def _publish(topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, properties: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += paho_internals.remaining_length(len(properties)) + properties + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + paho_internals.remaining_length(len(body)) + body


def _stream(seed: int) -> bytes:
    """PUBLISH packets of every shape the fast read meets or declines, and PUBACKs."""
    import random

    rnd = random.Random(seed)
    shapes = [b"", b"\x02\x00\x00\x01\x2c",  # none, an expiry: fast
              b"\x26\x00\x01a\x00\x01b",  # a user property: paho's
              b"\x01\x01", b"\x03\x00\x03a/b"]  # a payload format, a content type: paho's
    packets = []
    for i in range(300):
        size = rnd.choice([0, 1, 100, 127, 128, 5000, 20000, 70000])
        topic = rnd.choice([b"t/a", b"pnp/devices/000b82f55284/fetched", "t/\u00e9".encode()])
        packets.append(_publish(topic, bytes([65 + i % 26]) * size, rnd.choice([0, 1]), 1 + i,
                                rnd.random() < 0.5, rnd.choice(shapes)))
        if rnd.random() < 0.2:
            packets.append(bytes((0x40, 2, 0x7F, i % 256)))  # a PUBACK of nothing we sent
    return b"".join(packets)


def _read_all(fast: bool, data: bytes, seed: int) -> tuple[list, bytes]:
    """What a client hands its callbacks, and writes back, reading ``data`` as it arrives in
    random pieces."""
    import random

    client = make_client(parse_mqtt_url("mqtt://127.0.0.1:1"), "x", ReadySocketClient)
    client.on_socket_register_write = lambda *args: None
    mine, broker = socket.socketpair()
    mine.setblocking(False)
    client._sock = mine
    got: list = []
    client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), m.retain))
    if fast:
        client.on_fast_message = lambda topic, payload, retain: got.append((topic, payload, retain))
    read_packet, handle_rc = packet_reader(client)
    rnd = random.Random(seed)
    written = bytearray()
    at = 0
    while at < len(data):
        step = rnd.choice([1, 2, 3, 7, 100, 4096, 65536, 100000])
        broker.sendall(data[at:at + step])
        at += step
        while (rc := read_packet()) == mqtt.MQTT_ERR_SUCCESS:
            pass
        assert rc == mqtt.MQTT_ERR_AGAIN, rc
        while client.want_write():
            client.loop_write()
        broker.setblocking(False)
        try:
            while chunk := broker.recv(1 << 20):
                written += chunk
        except BlockingIOError:
            pass
        broker.setblocking(True)
    mine.close()
    broker.close()
    return got, bytes(written)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_read_hands_over_and_acknowledges_exactly_what_paho_does(seed):
    data = _stream(seed)
    fast, fast_written = _read_all(True, data, seed)
    paho, paho_written = _read_all(False, data, seed)
    assert len(paho) > 250
    assert fast == paho, "the fast read lost, changed or reordered a message"
    assert fast_written == paho_written, "the fast read acknowledged differently"


def test_a_publish_wakes_its_own_waiter_when_another_waits_too():
    """Every Touch 11 message shares one condition: the PUBACK of one must wake its waiter
    even when another message's waiter is asleep on the same condition."""
    import threading

    first, second = paho_internals._Info(1), paho_internals._Info(2)
    woke: list[int] = []
    threads = [threading.Thread(target=lambda i=i: (i.wait_for_publish(5), woke.append(i.mid)))
               for i in (second, first)]
    for t in threads:
        t.start()
    import time
    time.sleep(0.2)  # both asleep on the shared condition
    first._set_as_published()
    threads[1].join(3)
    assert woke == [1]
    second._set_as_published()
    threads[0].join(3)
    assert sorted(woke) == [1, 2]
