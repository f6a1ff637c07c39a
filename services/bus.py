"""An MQTT v5 client driven by the Twisted reactor, through paho's external event-loop API.

paho owns the protocol; the reactor owns the socket: paho tells us when its socket opens,
closes and wants writing, and the reactor calls ``loop_read``/``loop_write`` when it is ready.
No background thread. paho does not reconnect outside its own loop, so :class:`Bus` does, with
capped exponential backoff, and resubscribes every filter on each connect. QoS 1 messages
published while the broker is away wait in paho's bounded queue and go out on reconnect.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from twisted.internet import defer, task
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger

from services.messages import PayloadError, decode_json
from services.settings import MqttUrl

log = Logger(namespace="bus")


_UNPARSED: Any = object()


class Incoming:
    """A received message. ``data`` is the parsed JSON (None for an empty payload);
    ``error`` says why the payload could not be parsed, when it could not.

    Both are worked out on first access: a handler that can tell from ``raw`` that a message is
    nothing to it (the notifier and half a boot storm's ``fetched``) pays for no JSON parsing."""

    __slots__ = ("topic", "raw", "retain", "_data", "_error")

    def __init__(self, topic: str, raw: bytes, retain: bool, data: Any = _UNPARSED,
                 error: Any = _UNPARSED) -> None:
        self.topic = topic
        self.raw = raw
        self.retain = retain
        if data is _UNPARSED and error is _UNPARSED:
            self._data = self._error = _UNPARSED
        else:  # given: taken as is
            self._data = None if data is _UNPARSED else data
            self._error = None if error is _UNPARSED else error

    def _parse(self) -> None:
        self._data = self._error = None
        if self.raw:
            try:
                self._data = decode_json(self.raw)
            except PayloadError as exc:
                self._error = str(exc)

    @property
    def data(self) -> Any:
        if self._data is _UNPARSED:
            self._parse()
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        if self._error is _UNPARSED:
            self._error = None
        self._data = value

    @property
    def error(self) -> str | None:
        if self._error is _UNPARSED:
            self._parse()
        return self._error

    @error.setter
    def error(self, value: str | None) -> None:
        if self._data is _UNPARSED:
            self._data = None
        self._error = value

    @property
    def empty(self) -> bool:
        return len(self.raw) == 0

    def __repr__(self) -> str:
        return (f"Incoming(topic={self.topic!r}, raw={self.raw!r}, retain={self.retain!r}, "
                f"data={self.data!r}, error={self.error!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Incoming):
            return NotImplemented
        return ((self.topic, self.raw, self.retain, self.data, self.error)
                == (other.topic, other.raw, other.retain, other.data, other.error))


Handler = Callable[[Incoming], Any]

READ_BATCH = 64  # MQTT packets handled per turn of the reactor


@dataclass
class _Subscription:
    filter: str
    qos: int
    handlers: list[Handler] = field(default_factory=list)
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.levels = tuple(self.filter.split("/"))

    def matches(self, topic: str) -> bool:
        """MQTT topic matching, as paho's ``topic_matches_sub`` (which builds a matcher tree
        on every call: a few percent of a busy service's CPU)."""
        levels = self.levels
        if topic[:1] == "$" and levels[0] in ("+", "#"):
            return False  # wildcards never match $SYS and the like (MQTT 4.7.2)
        parts = topic.split("/")
        for i, level in enumerate(levels):
            if level == "#":
                return True
            if i >= len(parts) or (level != "+" and level != parts[i]):
                return False
        return len(parts) == len(levels)


_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0
COALESCE_MAX = 64 * 1024  # bytes joined into one send


_coalescing = True


def _coalesce(client: Any) -> None:
    """:func:`_join_packets`, switched off for good (and said once) if paho's private send
    queue ever changes shape: then every packet simply goes out on its own, as paho sends it."""
    global _coalescing
    if not _coalescing:
        return
    try:
        _join_packets(client)
    except (KeyError, TypeError, AttributeError) as exc:
        _coalescing = False
        log.warn("paho's send queue is not what this bus knows ({error}); sending packets one "
                 "by one", error=repr(exc))


def _join_packets(client: Any) -> None:
    """Join the packets paho queued in one reactor turn into few buffers: paho sends each one
    with its own ``send`` (a syscall per PUBACK and per publish, a tenth of a busy notifier's
    CPU). Only packets whose end paho ignores are joined (QoS 1 publishes, PUBACKs,
    subscriptions...); a QoS 0 publish (paho reports its sending) or a DISCONNECT (paho closes
    after it) stays whole. A joined buffer is marked as a PUBACK, which paho forgets once sent;
    a lost connection drops it like the packets it holds, and paho resends QoS 1 from its own
    store on reconnect."""
    queue = getattr(client, "_out_packet", None)
    if queue is None or len(queue) < 2:
        return
    out: list[dict] = []
    run: list[dict] = []
    size = 0

    def close_run() -> None:
        nonlocal size
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(_packet(b"".join(p["packet"] for p in run)))
        run.clear()
        size = 0

    for packet in queue:
        command = packet["command"] & 0xF0
        plain = (packet["pos"] == 0 and command != _DISCONNECT
                 and not (command == _PUBLISH and packet["qos"] == 0))
        if not plain:
            close_run()
            out.append(packet)
            continue
        if size + packet["to_process"] > COALESCE_MAX:
            close_run()
        run.append(packet)
        size += packet["to_process"]
    close_run()
    if len(out) < len(queue):
        queue.clear()
        queue.extend(out)


def _packet(data: bytes) -> dict:
    return {"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data),
            "packet": data, "info": None}


class _Client(mqtt.Client):
    """paho's client, handed a TCP connection the reactor made without blocking: paho's own
    ``connect`` waits in ``socket.create_connection``, and the reactor with it (a listener would
    stop answering phones for as long as an unreachable broker takes to time out)."""

    _ready_sock: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self._ready_sock = self._ready_sock, None
        if sock is None:
            return super()._create_socket_connection()
        sock.setblocking(True)  # as paho expects it (TLS handshake); it sets non-blocking after
        return sock


class _Connecting:
    """One non-blocking TCP connect, watched by the reactor until writable (done) or timed out."""

    def __init__(self, reactor: Any, address: tuple[str, int], timeout: float) -> None:
        self.reactor = reactor
        self.done: defer.Deferred = defer.Deferred()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        error = self.sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            self._finish(OSError(error, os.strerror(error)))
            return
        self._timer = reactor.callLater(timeout, self._timed_out)
        reactor.addWriter(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def doWrite(self) -> None:
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(OSError(error, os.strerror(error)) if error else None)

    def _timed_out(self) -> None:
        self._finish(socket.timeout("timed out"))

    def _finish(self, error: Exception | None) -> None:
        if self.done.called:
            return
        timer = getattr(self, "_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        self.reactor.removeWriter(self)
        if error is None:
            self.done.callback(self.sock)
        else:
            self.sock.close()
            self.done.errback(error)

    def cancel(self) -> None:
        self._finish(ConnectionAbortedError("stopped"))

    def connectionLost(self, reason: Any) -> None:
        # A refused connect is a hang-up, which the reactor reports here rather than to doWrite;
        # without this the attempt would wait for its timeout.
        if self.done.called:
            return
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(OSError(error, os.strerror(error)) if error else ConnectionAbortedError("closed"))

    def logPrefix(self) -> str:
        return "mqtt-connect"


class _SocketReader:
    """Adapts paho's socket to the reactor's IReadDescriptor/IWriteDescriptor."""

    def __init__(self, bus: "Bus", sock: Any) -> None:
        self.bus = bus
        self.sock = sock
        self._fileno = sock.fileno()
        self._again: Any = None

    def fileno(self) -> int:
        return self._fileno

    def doRead(self) -> None:
        client = self.bus._client
        self._read_some(client)
        # What the handlers published and the PUBACKs of what was read go out now, not after
        # another turn of the reactor: the broker sends a client only a few unacknowledged
        # messages at a time, so a late PUBACK stalls the next ones.
        if client.want_write():
            _coalesce(client)
            client.loop_write()

    def _read_some(self, client: Any) -> None:
        """At most READ_BATCH packets, then back to the reactor. paho's ``loop_read`` reads as
        many packets as messages await a PUBACK, and every handler that publishes adds one: in
        a burst one call grew to thousands of messages and seconds, while timers and other
        sockets (the notifier's 200 OKs, then retransmitted) waited. Same steps as loop_read."""
        read_packet = getattr(client, "_packet_read", None)
        handle_rc = getattr(client, "_loop_rc_handle", None)
        if read_packet is None or handle_rc is None:
            client.loop_read()
            return
        for _ in range(READ_BATCH):
            if client.socket() is None:
                return
            rc = read_packet()
            if rc > 0:
                handle_rc(rc)
                return
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return
        # More may be waiting; with TLS it may sit decrypted in the SSL object, where epoll
        # does not see it, so come back next turn rather than wait for the socket.
        if self._again is None:
            self._again = self.bus.reactor.callLater(0, self._more)

    def _more(self) -> None:
        self._again = None
        if self.bus._reader is self:
            self.doRead()

    def doWrite(self) -> None:
        _coalesce(self.bus._client)
        self.bus._client.loop_write()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "mqtt"


class Bus:
    """One MQTT connection for one service.

    ``on_connect`` callbacks run after every (re)connection, once subscriptions are renewed.
    """

    def __init__(
        self,
        url: MqttUrl,
        client_id: str,
        reactor: Any = None,
        *,
        max_queued: int = 100_000,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
        keepalive: int = 30,
        connect_timeout: float = 3.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url
        self.reactor = reactor
        self._subs: dict[str, _Subscription] = {}
        self._connect_callbacks: list[Callable[[], Any]] = []
        self._disconnect_callbacks: list[Callable[[], Any]] = []
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = backoff_initial
        self._reconnect_call: Any = None
        self._reader: _SocketReader | None = None
        self._stopping = False
        self._misc = task.LoopingCall(self._loop_misc)
        self._waiting_connect: list[defer.Deferred] = []
        self._pending_subacks: set[int] = set()
        self._waiting_subscribed: list[defer.Deferred] = []
        self.connected = False
        self.counters = {
            "mqtt_connects": 0,
            "mqtt_published": 0,
            "mqtt_received": 0,
            "mqtt_queue_overflow": 0,
            "mqtt_handler_errors": 0,
            "mqtt_publish_refused": 0,
        }
        self._refusal_logged_at = float("-inf")

        self._connecting: _Connecting | None = None
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.max_queued_messages_set(max_queued)
        # No paho-side cap on QoS 1 messages in flight: with one, paho rescans every unacked
        # message on each PUBACK (quadratic in a burst); the bounded queue above still limits
        # what waits, and mosquitto acknowledges QoS 1 at once, whatever its receive maximum.
        self._client.max_inflight_messages_set(0)
        self._client.connect_timeout = connect_timeout
        self._keepalive = keepalive
        if url.username:
            self._client.username_pw_set(url.username, url.password)
        if url.tls:
            self._client.tls_set_context(ssl.create_default_context())
        c = self._client
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        # paho swallows callback exceptions only when told to; ours are caught per handler.
        c.suppress_exceptions = True

    # --- public API ---
    def will_set(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self._client.will_set(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, replay: bool = False) -> None:
        """Call ``handler`` for each message matching ``topic_filter``, now and after reconnects.

        ``replay``: subscribe again even if the filter already is, so that the broker sends its
        retained messages once more (to every handler of the filter)."""
        sub = self._subs.get(topic_filter)
        if sub is None:
            sub = self._subs[topic_filter] = _Subscription(topic_filter, qos)
            if self.connected:
                self._send_subscribe(sub)
        elif replay and self.connected:
            self._send_subscribe(sub)
        sub.handlers.append(handler)

    def unsubscribe(self, topic_filter: str) -> None:
        if self._subs.pop(topic_filter, None) is not None and self.connected:
            self._client.unsubscribe(topic_filter)

    def remove_handler(self, topic_filter: str, handler: Handler) -> None:
        """Stop calling ``handler``; the filter is unsubscribed once no handler is left."""
        sub = self._subs.get(topic_filter)
        if sub is None:
            return
        if handler in sub.handlers:
            sub.handlers.remove(handler)
        if not sub.handlers:
            self.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes | str | None, retain: bool = False, qos: int = 1,
                expiry: int | None = None) -> bool:
        """Queue a message. Returns False (and counts it) when the bounded queue is full.
        ``expiry``: seconds after which the broker drops it (MQTT v5 Message Expiry Interval;
        a retained one is then no longer sent to new subscribers)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        properties = None
        if expiry is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, int(expiry))
        info = self._client.publish(topic, payload or b"", qos=qos, retain=retain,
                                    properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.counters["mqtt_queue_overflow"] += 1
            log.error("outbound queue full, message to {topic} dropped", topic=topic)
            return False
        self.counters["mqtt_published"] += 1
        self._kick_write()
        return True

    def publish_json(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> bool:
        data = payload.to_json() if hasattr(payload, "to_json") else _json_bytes(payload)
        return self.publish(topic, data, retain=retain, qos=qos)

    def on_connect(self, callback: Callable[[], Any]) -> None:
        self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: Callable[[], Any]) -> None:
        self._disconnect_callbacks.append(callback)

    @property
    def queued(self) -> int:
        """Messages accepted but not yet acknowledged by the broker."""
        return len(self._client._out_messages)

    def start(self) -> None:
        """Connect now, and keep reconnecting until :meth:`stop`."""
        self._stopping = False
        if not self._misc.running:
            self._misc.start(1.0, now=False)
        self._attempt()

    def when_connected(self) -> defer.Deferred:
        if self.connected:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting_connect.append(d)
        return d

    def flush(self, timeout: float = 3.0) -> defer.Deferred:
        """Fires once every queued message was acknowledged, or after ``timeout``."""
        d: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            if not self.queued or self.reactor.seconds() >= deadline or not self.connected:
                if poll.running:
                    poll.stop()
                d.callback(self.queued == 0)

        poll = task.LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.01)
        return d

    def when_subscribed(self) -> defer.Deferred:
        """Fires once connected and every subscription so far is acknowledged by the broker."""
        if self.connected and not self._pending_subacks:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting_subscribed.append(d)
        return d

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._stopping = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._misc.running:
            self._misc.stop()
        if self.connected:
            self._client.disconnect()
            self._client.loop_write()
        self._drop_reader()
        self.connected = False

    # --- connection management ---
    @defer.inlineCallbacks
    def _attempt(self) -> Any:
        self._reconnect_call = None
        if self._stopping or self._connecting is not None:
            return
        try:
            if not self._client._host:
                # paho's settings for the connection; no network yet
                self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive,
                                           clean_start=True)
            address = yield self._resolve(self.url.host)
            self._connecting = _Connecting(self.reactor, (address, self.url.port),
                                           self._client.connect_timeout)
            try:
                self._client._ready_sock = yield self._connecting.done
            finally:
                self._connecting = None
            if self._stopping:
                self._client._ready_sock.close()
                self._client._ready_sock = None
                return
            self._client.reconnect()
        except (OSError, socket.timeout, ssl.SSLError, ValueError, DNSLookupError) as exc:
            if self._stopping:
                return
            log.warn("broker {url} not reachable ({error}); retrying in {delay:.2f}s",
                     url=str(self.url), error=str(exc) or type(exc).__name__, delay=self._backoff)
            self._drop_reader()
            self._schedule_reconnect()
        except Exception:
            # whatever went wrong, a service keeps trying rather than going quiet for good
            log.failure("connecting to the broker {url} failed", url=str(self.url))
            self._drop_reader()
            self._schedule_reconnect()

    def _resolve(self, host: str) -> defer.Deferred:
        try:
            socket.inet_aton(host)
            return defer.succeed(host)
        except OSError:
            return self.reactor.resolve(host)

    def _schedule_reconnect(self) -> None:
        if self._stopping or (self._reconnect_call is not None and self._reconnect_call.active()):
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
        self._reconnect_call = self.reactor.callLater(delay, self._attempt)

    def _loop_misc(self) -> None:
        if self._client.socket() is not None:
            self._client.loop_misc()

    def _kick_write(self) -> None:
        if self._reader is not None and self._client.want_write():
            self.reactor.addWriter(self._reader)

    def _drop_reader(self) -> None:
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
            self.reactor.removeWriter(self._reader)
            self._reader = None

    # --- paho callbacks ---
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._drop_reader()
        # Nagle holds small publishes back for up to 40 ms: every hop of a NOTIFY path is one.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._reader = _SocketReader(self, sock)
        self.reactor.addReader(self._reader)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._drop_reader()

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._reader is not None:
            self.reactor.addWriter(self._reader)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._reader is not None:
            self.reactor.removeWriter(self._reader)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker {url} refused the connection: {reason}", url=str(self.url), reason=str(reason))
            return
        self.connected = True
        self._backoff = self._backoff_initial
        self.counters["mqtt_connects"] += 1
        log.info("connected to {url}", url=str(self.url))
        self._pending_subacks.clear()
        for sub in self._subs.values():
            self._send_subscribe(sub)
        for cb in list(self._connect_callbacks):
            self._safely(cb, "on_connect")
        waiting, self._waiting_connect = self._waiting_connect, []
        for d in waiting:
            d.callback(None)
        self._check_subscribed()

    def _send_subscribe(self, sub: _Subscription) -> None:
        rc, mid = self._client.subscribe(sub.filter, sub.qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks.add(mid)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # A broker's ACL refuses a QoS 1 publish only by the PUBACK's reason code (135 "not
        # authorized"): without this a wrong login looks like success.
        if reason is None or not getattr(reason, "is_failure", False):
            return
        self.counters["mqtt_publish_refused"] += 1
        now = self.reactor.seconds()
        if now - self._refusal_logged_at >= 10.0:
            self._refusal_logged_at = now
            message = self._client._out_messages.get(mid)
            log.error("broker refused a publish to {topic}: {reason} ({count} refused so far)",
                      topic=getattr(message, "topic", "?"), reason=str(reason),
                      count=self.counters["mqtt_publish_refused"])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._pending_subacks.discard(mid)
        for reason in reasons or []:
            if getattr(reason, "is_failure", False):
                log.error("broker refused a subscription: {reason}", reason=str(reason))
        self._check_subscribed()

    def _check_subscribed(self) -> None:
        if self.connected and not self._pending_subacks and self._waiting_subscribed:
            waiting, self._waiting_subscribed = self._waiting_subscribed, []
            for d in waiting:
                d.callback(None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self.connected
        self.connected = False
        self._drop_reader()
        if self._stopping:
            return
        if was_connected:
            log.warn("lost the broker {url} ({reason}); reconnecting", url=str(self.url), reason=str(reason))
            for cb in list(self._disconnect_callbacks):
                self._safely(cb, "on_disconnect")
        self._schedule_reconnect()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters["mqtt_received"] += 1
        raw = bytes(msg.payload)
        incoming = Incoming(msg.topic, raw, bool(msg.retain))
        for sub in list(self._subs.values()):
            if sub.matches(msg.topic):
                for handler in list(sub.handlers):
                    self._safely(handler, msg.topic, incoming)

    def _safely(self, fn: Callable, what: str, *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception:
            self.counters["mqtt_handler_errors"] += 1
            log.failure("handler for {topic} raised", topic=what)
            return
        if isinstance(result, defer.Deferred):
            def failed(failure: Any) -> None:
                self.counters["mqtt_handler_errors"] += 1
                log.failure("handler for {topic} failed", failure, topic=what)

            result.addErrback(failed)


def _json_bytes(data: Any) -> bytes:
    from services.messages import encode_json

    return encode_json(data)

