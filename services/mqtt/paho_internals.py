"""Every place the bus relies on paho's private attributes, each with why, in one module.

paho 2.x offers an external event-loop API but not everything a reactor-driven client needs:
a connect that does not block, a bounded read, the count of unacknowledged messages, one
``send`` for many packets, whether one of our callbacks is running, a cheap PUBACK, one
``recv`` for many packets and a received message without paho's per-message objects. What follows reaches past paho's public API for those, and nothing
else in the tree does. ``tests/test_mqtt_paho_internals.py`` checks, for the paho range that
``pyproject.toml`` allows, that each attribute still has the shape used here, so an upgrade
that changes one fails that test by name instead of a service at run time. Where a touch can
fall back to public API (the bounded read, the joined sends), it does, and says so once.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# paho's queued packet (its private ``_OutPacket`` TypedDict): keys read by coalesce.py, which
# joins packets; the pinned test compares a real queued packet against this.
PACKET_KEYS = frozenset({"command", "mid", "qos", "pos", "to_process", "packet", "info"})
_PUBLISH, _PUBACK = 0x30, 0x40
_MESSAGE_EXPIRY = 0x02  # MQTT v5 property identifier


class ReadySocketClient(mqtt.Client):
    """paho's client, handed a TCP connection the reactor made without blocking: paho's own
    ``connect`` waits in ``socket.create_connection``, and the reactor with it (a listener would
    stop answering phones for as long as an unreachable broker takes to time out)."""

    _ready_sock: socket.socket | None = None
    _received = b""  # bytes read from the socket that paho has not asked for yet
    _received_at = 0
    # The last recv took a few bytes (DRAINED_SIZE at most: a PUBACK or a few) from a plain TCP
    # socket, all of it has been read since, and paho did not recv on its own meanwhile: the
    # socket was empty then, and handling them took microseconds, so the next recv would most
    # likely only say "would block" (Touch 10)
    _drained = False

    def hand_socket(self, sock: socket.socket | None) -> None:
        """The connected socket the next ``reconnect`` uses (None: take back one not used)."""
        if sock is None and self._ready_sock is not None:
            self._ready_sock.close()
        self._ready_sock = sock

    # Touch 1: paho's private socket factory, the one step of ``reconnect`` that blocks.
    def _create_socket_connection(self) -> socket.socket:
        self._received, self._received_at = b"", 0  # nothing of the last connection is read on
        self._drained = False
        sock, self._ready_sock = self._ready_sock, None
        if sock is None:
            return super()._create_socket_connection()
        sock.setblocking(True)  # as paho expects it (TLS handshake); it sets non-blocking after
        return sock

    # Touch 9: paho's private receive step. paho reads a packet in three ``recv`` calls (its
    # type, its length, the rest): three system calls for a four-byte PUBACK, and a service
    # that publishes one message per event gets one PUBACK per event. This reads what the
    # socket holds at once and hands paho its bytes from memory. Bytes kept here are invisible
    # to epoll, as decrypted TLS bytes are: the bus's bounded read (connect.py) already comes
    # back on the next turn when it stops with packets possibly left, and reads until paho
    # says "again", which it only says once this buffer and the socket are both empty.
    def _sock_recv(self, bufsize: int) -> bytes:
        data, at = self._received, self._received_at
        if at >= len(data) or self._sock is None:
            self._received, self._received_at = b"", 0
            data = super()._sock_recv(max(bufsize, RECEIVE_SIZE))
            if len(data) <= bufsize:
                return data
            at = 0
            self._received = data
        end = at + bufsize
        self._received_at = end
        return data[at:end]

    # Touch 8: paho's private PUBACK handler. It decodes every PUBACK into a fresh ReasonCode
    # and Properties (objects that build themselves through per-field lookups), about a third
    # of what a QoS 1 publish costs a service that publishes one per event (the fileserver's
    # ``fetched`` per download). What mosquitto sends for an accepted message (success, or "no
    # matching subscribers", without properties: two to four bytes) is answered with shared
    # objects; anything else goes to paho as before. The objects reach ``on_publish`` only,
    # and the bus reads them, never changes them.
    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd == "PUBACK":
            plain = self._plain_puback(packet, 0, len(packet))
            if plain is not None:
                return self._acknowledged(*plain)
        handled: MQTTErrorCode = super()._handle_pubackcomp(cmd)
        return handled

    def _plain_puback(self, data: bytes | bytearray, start: int, end: int) -> tuple[int, ReasonCode] | None:
        """The mid and shared reason of a PUBACK accepting a message, None for any other."""
        size = end - start
        if self._protocol != mqtt.MQTTv5 or not 2 <= size <= 4:
            return None
        reason = _PUBACK_ACCEPTED.get(data[start + 2] if size > 2 else 0)
        if reason is None or (size == 4 and data[start + 3] != 0):
            return None
        return (data[start] << 8) | data[start + 1], reason

    def _acknowledged(self, mid: int, reason: ReasonCode) -> MQTTErrorCode:
        with self._out_message_mutex:
            if mid in self._out_messages:
                rc: MQTTErrorCode = self._do_on_publish(mid, reason, _PUBACK_PROPERTIES)
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # Touch 10: paho's private read-one-packet step. For every packet paho makes three reads
    # (type, length, rest) through a dict of counters, and for every PUBLISH an MQTTMessage,
    # a Properties object (a class that builds itself through per-field lookups) and a
    # debug line's arguments: five sixths of what the bus spent on a received message
    # (bench/mqtt_bench.py), and every service receives every message that way. None of
    # them reads a message's properties. So a whole
    # packet already in this client's buffer (Touch 9) is handled here when it is plain: a
    # QoS 0 or 1 PUBLISH with no property or only a Message Expiry Interval (what the
    # services publish; the expiry is the broker's business, not a receiver's), handed to
    # ``on_fast_message`` as (topic, payload, retain); or a PUBACK of an accepted message
    # (Touch 8). Anything else, or a packet not wholly read yet, goes through paho's own
    # step, which reads the same bytes from the buffer. Order and acknowledgement stay as
    # paho had them: the PUBACK of a QoS 1 message is queued after our callback returned,
    # under the same callback lock (``in_callback``), in the order the messages came. A
    # client with ``on_fast_message`` set gets every plain message there, past paho's
    # per-filter callbacks (``message_callback_add``, which the bus does not use).
    on_fast_message: Callable[[str, bytes, bool], Any] | None = None

    def _packet_read(self) -> MQTTErrorCode:
        if self._in_packet["command"] != 0 or self._sock is None:
            return self._paho_packet_read()  # part-way through a packet paho began
        data, at = self._received, self._received_at
        if at >= len(data):
            if self._drained:
                # The last recv was small: the socket held no more, and one more recv (a system
                # call and an exception, for every PUBACK a service waits for) would only say
                # so. "Again" sends the caller (the bus's bounded read, or paho's loop_read) back
                # to wait for the socket to be readable;
                # bytes that came since keep it readable (epoll and select are level-triggered
                # here), and the call after this one asks the socket whatever happens. Not for
                # TLS, where decrypted bytes can wait in the SSL object, unseen by epoll.
                self._drained = False
                return MQTTErrorCode.MQTT_ERR_AGAIN
            try:
                data = mqtt.Client._sock_recv(self, RECEIVE_SIZE)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return self._paho_packet_read()  # paho reads again and says what went wrong
            if not data:
                return self._paho_packet_read()  # the end of the connection, paho's way
            self._received, self._received_at, at = data, 0, 0
            sock = self._sock
            self._drained = (len(data) <= DRAINED_SIZE and not isinstance(sock, ssl.SSLSocket)
                             and getattr(sock, "gettimeout", lambda: None)() == 0.0)  # non-blocking
            # what paho's keepalive reads: when bytes last came (one stamp per read)
            setattr(self, _RECEIVED_STAMP, time_func())
        size = len(data)
        start = at + 2
        if start > size:
            return self._paho_packet_read()
        command, length = data[at], data[at + 1]
        if length & 0x80:  # a remaining length of up to four bytes
            length &= 0x7F
            shift = 7
            while True:
                if start >= size or shift > 21:
                    return self._paho_packet_read()  # not all here yet, or malformed
                byte = data[start]
                start += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        end = start + length
        if end > size:
            return self._paho_packet_read()
        kind = command & 0xF0
        if kind == _PUBLISH:
            return self._fast_publish(command, data, start, end)
        if kind == _PUBACK:
            plain = self._plain_puback(data, start, end)
            if plain is not None:
                self._received_at = end  # read before the callback, which may end the connection
                return self._acknowledged(*plain)
        return self._paho_packet_read()

    def _paho_packet_read(self) -> MQTTErrorCode:
        # paho may recv again (a packet the small read held only part of): the socket is then
        # not known to be empty any more, and the next read asks it
        self._drained = False
        rc: MQTTErrorCode = super()._packet_read()
        return rc

    def _fast_publish(self, command: int, data: bytes, start: int, end: int) -> MQTTErrorCode:
        qos = (command >> 1) & 3
        callback = self.on_fast_message
        if qos > 1 or callback is None or self._protocol != mqtt.MQTTv5 or end - start < 3:
            return self._paho_packet_read()
        topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
        at = topic_end + 2 if qos else topic_end
        if at >= end:
            return self._paho_packet_read()
        mid = (data[topic_end] << 8) | data[topic_end + 1] if qos else 0
        properties = data[at]
        if properties == 0:
            at += 1
        elif properties == 5 and at + 6 <= end and data[at + 1] == _MESSAGE_EXPIRY:
            at += 6
        else:
            return self._paho_packet_read()
        if at > end or topic_end == start + 2:  # no topic: a topic alias, paho's business
            return self._paho_packet_read()
        try:
            topic = data[start + 2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return self._paho_packet_read()  # paho reports it its way
        self._received_at = end  # read before the callback, which may end the connection
        with self._in_callback_mutex:
            try:
                callback(topic, data[at:end], bool(command & 1))
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        rc: MQTTErrorCode = self._packet_queue(_PUBACK, bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)), mid, 1)
        return rc

    # Touch 11: paho's publish, for the one kind every service sends (QoS 1, connected, bytes
    # payload, no in-flight cap). paho makes an MQTTMessage and its MQTTMessageInfo (each with
    # a threading.Condition of its own) and packs the packet through a bytearray a field at a
    # time, with a debug line's arguments: over half of what a publish costs the service. This
    # makes the same message (paho's own class, in paho's store under its lock, in the state
    # paho gives it, so that a PUBACK, a reconnect's resend and ``unacknowledged`` see nothing
    # different) with a condition shared by every message (``wait_for_publish`` still works:
    # a PUBACK wakes every waiter, _Info._set_as_published, and each checks its own flag and
    # waits again), and queues the
    # packet's bytes made in one join. Anything else is paho's publish, unchanged.
    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        if (qos != 1 or type(payload) is not bytes or self._sock is None or not topic
                or self._protocol != mqtt.MQTTv5 or self._max_inflight_messages != 0):
            return super().publish(topic, payload, qos, retain, properties)
        name = topic.encode("utf-8")
        if b"+" in name or b"#" in name or len(name) > 65535 or len(name) + len(payload) > 268_435_000:
            return super().publish(topic, payload, qos, retain, properties)  # paho says no
        mid = self._mid_generate()
        message = _Outgoing(mid, name, payload, retain, properties)
        info = message.info
        with self._out_message_mutex:
            # paho's checks and bookkeeping, in paho's order
            if ((self._max_queued_messages > 0 and len(self._out_messages) >= self._max_queued_messages)
                    or mid in self._out_messages):
                info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return info
            self._out_messages[mid] = message
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback
            packed = b"\x00" if properties is None else properties.pack()  # type: ignore[no-untyped-call]
            size = 4 + len(name) + len(packed) + len(payload)
            packet = b"".join((_PUBLISH_QOS1[retain], remaining_length(size),
                               len(name).to_bytes(2, "big"), name, mid.to_bytes(2, "big"), packed,
                               payload))
            info.rc = self._packet_queue(_PUBLISH, packet, mid, 1, info)
            return info


class _Info(mqtt.MQTTMessageInfo):
    """paho's MQTTMessageInfo with a condition shared by all (paho makes one per message)."""

    __slots__ = ()

    def __init__(self, mid: int) -> None:  # paho's fields, set as paho sets them
        self.mid = mid
        self._published = False
        self._condition = _SHARED_CONDITION
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        # paho's notify() wakes one waiter: on a condition shared by every message that may be
        # another message's waiter, and this one's would sleep for ever
        with self._condition:
            self._published = True
            self._condition.notify_all()


class _Outgoing(mqtt.MQTTMessage):
    """paho's MQTTMessage of a QoS 1 publish, made in one step (paho's fields, as its publish
    sets them)."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, retain: bool,
                 properties: Properties | None) -> None:
        self.timestamp = time_func()
        self.state = mqtt.mqtt_ms_publish
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = 1
        self.retain = retain
        self.info = _Info(mid)
        self.properties = properties


_SHARED_CONDITION = threading.Condition()
_PUBLISH_QOS1 = (bytes((_PUBLISH | 2,)), bytes((_PUBLISH | 3,)))  # by retain flag


def remaining_length(size: int) -> bytes:
    """MQTT's variable-length integer."""
    if size < 128:
        return bytes((size,))
    out = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        out.append(byte | 0x80 if size else byte)
        if not size:
            return bytes(out)

RECEIVE_SIZE = 65536  # what one recv asks for: a burst of PUBACKs or messages in one call
# A recv of at most this many bytes is not followed by another in the same read (Touch 10).
# Small: a read of a burst's messages takes long enough for more of them to arrive, and reading
# those in the same batch keeps a burst's work together (the notifier's NOTIFYs before their
# statuses, tests/test_notifier.py); a lone PUBACK (4 bytes), the wakeup of a service that
# publishes one message per event, is what this spares a futile recv.
DRAINED_SIZE = 64

# paho's clock and the attribute its keepalive reads for "bytes last received" (renamed in 2.2)
time_func: Callable[[], float] = getattr(mqtt, "time_func", time.monotonic)
_RECEIVED_STAMP = ("_last_msg_in" if re.match(r"2\.[01]\.", paho.mqtt.__version__)
                   else "_last_bytes_received")

# PUBACK reason codes of an accepted message: 0 success, 16 no matching subscribers
_PUBACK_ACCEPTED = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0, 16)}
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def has_connect_settings(client: mqtt.Client) -> bool:
    """Whether ``connect_async`` already gave paho its host (it must run once, before the first
    ``reconnect``; calling it again would reset what paho keeps across reconnects)."""
    # Touch 2: paho has no public getter for the host it will connect to.
    return bool(client._host)


def unacknowledged(client: mqtt.Client) -> int:
    """QoS 1 messages paho holds until the broker acknowledges them (queued ones included)."""
    # Touch 3: paho keeps them in a private ordered dict and has no public count.
    return len(client._out_messages)


def unacknowledged_topic(client: mqtt.Client, mid: int) -> str:
    """The topic of the unacknowledged message ``mid`` ('?' if paho no longer holds it): a
    refused PUBACK names only the mid."""
    # Touch 4: the same private dict, looked up by mid.
    return getattr(client._out_messages.get(mid), "topic", "?")


def packet_reader(client: mqtt.Client) -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
    """paho's read-one-packet step and its error handling, as ``loop_read`` uses them: the bus
    calls them a bounded number of times per reactor turn, where ``loop_read`` reads as many
    packets as messages await a PUBACK (thousands in a burst, seconds of a stalled reactor).
    None when paho no longer has them: then the caller uses ``loop_read``."""
    # Touch 5: both are private; paho has no public "read at most N packets".
    read_packet = getattr(client, "_packet_read", None)
    handle_rc = getattr(client, "_loop_rc_handle", None)
    if read_packet is None or handle_rc is None:
        return None
    return read_packet, handle_rc


def write_registered(client: mqtt.Client) -> bool:
    """Whether paho thinks it asked to be told when its socket is writable (its private
    ``_registered_write``). With TLS a read can end wanting to write (SSLWantWriteError) while
    nothing is queued; paho then registers and sets this flag, and never asks again until it is
    cleared by a ``loop_write``."""
    return bool(getattr(client, "_registered_write", False))


def in_callback(client: mqtt.Client) -> bool:
    """Whether paho is running one of our callbacks now (a handler, ``on_connect``...)."""
    # Touch 7: paho holds this plain (not re-entrant) lock around every callback and takes it
    # again when a written DISCONNECT ends the connection: writing one from inside a callback
    # (a handler that stops the bus) would wait for itself. There is no public way to ask.
    lock = getattr(client, "_in_callback_mutex", None)
    return lock is not None and lock.locked()


def send_queue(client: Any) -> deque[dict[str, Any]] | None:
    """paho's queue of packets to send (dicts shaped as :data:`PACKET_KEYS`), or None."""
    # Touch 6: paho sends each queued packet with its own ``send``; coalesce.py joins them in
    # place, as paho has no public way to write several packets at once.
    queue: deque[dict[str, Any]] | None = getattr(client, "_out_packet", None)
    return queue


def sent_once_packet(data: bytes) -> dict[str, Any]:
    """A queue entry for bytes paho should send and then forget: marked as a PUBACK, which
    paho drops once sent without reporting it (no callback, no message store)."""
    return {"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data),
            "packet": data, "info": None}
