"""An MQTT v5 client driven by the Twisted reactor, through paho's external event-loop API.

paho owns the protocol; the reactor owns the socket: paho tells us when its socket opens,
closes and wants writing, and the reactor calls ``loop_read``/``loop_write`` when it is ready.
No background thread. paho does not reconnect outside its own loop, so :class:`Bus` does, with
capped exponential backoff, and resubscribes every filter on each connect. QoS 1 messages
published while the broker is away wait in paho's bounded queue and go out on reconnect.
"""

from __future__ import annotations

import functools
import socket
import ssl
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from twisted.internet import defer, task
from twisted.internet.error import DNSLookupError
from twisted.logger import Logger

from services.messages import encode_json
from services.mqtt.client import make_client
from services.mqtt.connect import Connecting, SocketAdapter
from services.mqtt.incoming import Handler, Incoming
from services.mqtt.matching import TopicFilter
from services.mqtt.paho_internals import (
    ReadySocketClient,
    has_connect_settings,
    in_callback,
    unacknowledged,
    unacknowledged_topic,
)
from services.settings import MqttUrl

log = Logger(namespace="bus")


class _PackedOnce(Properties):
    """Properties that are never changed once made, packed once: paho packs a message's
    properties every time it sends it, and making and packing them was 80 us of every expiring
    discovery the listener publishes."""

    _packed: bytes | None = None

    def pack(self) -> bytes:
        if self._packed is None:
            object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]
        assert self._packed is not None
        return self._packed


@functools.lru_cache(maxsize=256)
def _expiry_properties(seconds: int) -> Properties:
    """The PUBLISH properties of a message that expires after ``seconds``, shared by every
    message with that expiry (a new discovery's is always the TTL)."""
    properties = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    properties.MessageExpiryInterval = seconds
    return properties


class _Batch:
    """``Bus.batch``: holds the socket adapter's writes while it is entered (a plain class: a
    generator-based context manager costs more than the rest of a listener's publish)."""

    __slots__ = ("reader", "held")

    def __init__(self, reader: SocketAdapter | None) -> None:
        self.reader = reader
        self.held = False

    def __enter__(self) -> None:
        reader = self.reader
        if reader is not None and not reader.reading:  # inside a read, the read writes at its end
            reader.reading = self.held = True

    def __exit__(self, *exc: object) -> None:
        if self.held:
            reader = self.reader
            assert reader is not None
            reader.reading = self.held = False
            if reader.active:
                reader.flush()


class _Subscription(TopicFilter):
    """A subscribed filter, its QoS and the handlers its messages go to."""

    __slots__ = ("qos", "handlers", "no_local")

    def __init__(self, topic_filter: str, qos: int, no_local: bool = False) -> None:
        super().__init__(topic_filter)
        self.qos = qos
        self.handlers: list[Handler] = []
        self.no_local = no_local


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
        self._ack_callbacks: list[Callable[[], Any]] = []
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = backoff_initial
        self._reconnect_call: Any = None
        self._reader: SocketAdapter | None = None
        self._read_pace = 0.0
        self._pace_clock: Any = reactor
        self._stopping = False
        self._misc = task.LoopingCall(self._loop_misc)
        self._waiting_connect: list[defer.Deferred[None]] = []
        self._pending_subacks: set[int] = set()
        self._waiting_subscribed: list[defer.Deferred[None]] = []
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

        self._connecting: Connecting | None = None
        self._client = make_client(url, client_id, ReadySocketClient)
        self._client.max_queued_messages_set(max_queued)
        # No paho-side cap on QoS 1 messages in flight: with one, paho rescans every unacked
        # message on each PUBACK (quadratic in a burst); the bounded queue above still limits
        # what waits, and mosquitto acknowledges QoS 1 at once, whatever its receive maximum.
        self._client.max_inflight_messages_set(0)
        self._client.connect_timeout = connect_timeout
        self._keepalive = keepalive
        c = self._client
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_fast_message = self._on_received  # plain messages, without paho's MQTTMessage
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        # paho swallows callback exceptions only when told to; ours are caught per handler.
        c.suppress_exceptions = True

    # --- public API ---
    def will_set(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self._client.will_set(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, replay: bool = False,
                  no_local: bool = False) -> None:
        """Call ``handler`` for each message matching ``topic_filter``, now and after reconnects.

        ``replay``: subscribe again even if the filter already is, so that the broker sends its
        retained messages once more (to every handler of the filter).
        ``no_local``: the handler does not want the messages this connection publishes (MQTT v5
        No Local): the broker does not send them back, which spares a service that publishes on
        a topic it also reads the echo of each of its own messages. A filter is No Local only
        while every handler of it asked for that: a handler that wants them all renews it."""
        sub = self._subs.get(topic_filter)
        if sub is None:
            sub = self._subs[topic_filter] = _Subscription(topic_filter, qos, no_local)
            if self.connected:
                self._send_subscribe(sub)
        elif sub.no_local and not no_local:
            sub.no_local = False
            if self.connected:
                # mosquitto keeps a subscription's first options when it is renewed: dropped
                # and made again (both in order on this connection), with its retained messages
                self._client.unsubscribe(topic_filter)
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
        properties = None if expiry is None else _expiry_properties(max(1, int(expiry)))
        info = self._client.publish(topic, payload or b"", qos=qos, retain=retain,
                                    properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.counters["mqtt_queue_overflow"] += 1
            log.error("outbound queue full, message to {topic} dropped", topic=topic)
            return False
        self.counters["mqtt_published"] += 1
        self._kick_write()
        return True

    def batch(self) -> "_Batch":
        """What is published inside goes out at its end, at once, in one ``send`` where it can.

        Outside a read of the broker's socket, a publish is written only when the reactor next
        reports the socket writable: an epoll_ctl to watch it, a poll round that says so, and
        an epoll_ctl to stop watching, for every turn that publishes. A timer or another
        socket's handler that publishes (the listener's outbox, after its phones' answers)
        saves those and the wait by publishing inside a batch. Inside a read (a message
        handler) it changes nothing: the read writes at its end anyway. Writing at once keeps
        the order: paho's queue is written front first, and what the socket does not take
        waits for the reactor's writable report as before."""
        return _Batch(self._reader)

    def pace_reads(self, seconds: float, clock: Any = None) -> None:
        """Read the broker's socket at most every ``seconds`` while messages keep coming: after
        a read that emptied it, the socket is not watched for that long, and what the broker
        sends meanwhile waits in the kernel's buffer to be read in one wakeup. For a client on
        no phone's path that takes every phone's messages (the console): a wakeup per message
        was most of its CPU, on a machine whose listener and notifier wait for a core
        meanwhile. A message after a quiet spell is read when it comes; a read that stopped at
        its batch's end (READ_BATCH) is followed at once. The broker's side is unchanged: a
        reader that pauses is like one that is busy (the kernel's buffer, then mosquitto's
        queue, hold what comes). ``clock``: for the pause only (tests)."""
        self._read_pace = seconds
        self._pace_clock = clock if clock is not None else self.reactor
        if self._reader is not None:
            self._reader.pace, self._reader.pace_clock = seconds, self._pace_clock

    def read_pauses(self) -> int:
        """Reads followed by a pause on the current connection (``pace_reads``)."""
        return self._reader.pauses if self._reader is not None else 0

    def publish_json(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> bool:
        data = payload.to_json() if hasattr(payload, "to_json") else encode_json(payload)
        return self.publish(topic, data, retain=retain, qos=qos)

    def on_connect(self, callback: Callable[[], Any]) -> None:
        self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: Callable[[], Any]) -> None:
        self._disconnect_callbacks.append(callback)

    def on_acknowledged(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` on every PUBACK: room in a window of unacknowledged messages (the
        listener's outbox) is known at once, not at a poll."""
        self._ack_callbacks.append(callback)

    @property
    def queued(self) -> int:
        """Messages accepted but not yet acknowledged by the broker."""
        return unacknowledged(self._client)

    def start(self) -> None:
        """Connect now, and keep reconnecting until :meth:`stop`."""
        self._stopping = False
        if not self._misc.running:
            self._misc.start(1.0, now=False)
        self._attempt()

    def when_connected(self) -> defer.Deferred[None]:
        if self.connected:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting_connect.append(d)
        return d

    def flush(self, timeout: float = 3.0) -> defer.Deferred[bool]:
        """Fires once every queued message was acknowledged, or after ``timeout``."""
        d: defer.Deferred[bool] = defer.Deferred()
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

    def when_subscribed(self) -> defer.Deferred[None]:
        """Fires once connected and every subscription so far is acknowledged by the broker."""
        if self.connected and not self._pending_subacks:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
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
            if in_callback(self._client):
                # a handler stopping the bus: the DISCONNECT goes out once paho's callback has
                # returned (writing it now would wait on paho's callback lock for ever)
                self.reactor.callLater(0, self._client.loop_write)
            else:
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
            if not has_connect_settings(self._client):
                # paho's settings for the connection; no network yet
                self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive,
                                           clean_start=True)
            address = yield self._resolve(self.url.host)
            self._connecting = Connecting(self.reactor, (address, self.url.port),
                                           self._client.connect_timeout)
            try:
                self._client.hand_socket((yield self._connecting.done))
            finally:
                self._connecting = None
            if self._stopping:
                self._client.hand_socket(None)
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

    def _resolve(self, host: str) -> defer.Deferred[str]:
        try:
            socket.inet_aton(host)
            return defer.succeed(host)
        except OSError:
            resolved: defer.Deferred[str] = self.reactor.resolve(host)
            return resolved

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
        reader = self._reader
        if reader is not None and not reader.reading and self._client.want_write():
            self.reactor.addWriter(reader)

    def _drop_reader(self) -> None:
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
            self.reactor.removeWriter(self._reader)
            self._reader.deactivate()
            self._reader = None

    # --- paho callbacks ---
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._drop_reader()
        # Nagle holds small publishes back for up to 40 ms: every hop of a NOTIFY path is one.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._reader = SocketAdapter(self.reactor, self._client, sock)
        self._reader.pace, self._reader.pace_clock = self._read_pace, self._pace_clock
        self.reactor.addReader(self._reader)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._drop_reader()

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        reader = self._reader
        if reader is not None and not reader.reading:  # else its doRead writes at its end
            self.reactor.addWriter(reader)

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
        if sub.no_local:
            rc, mid = self._client.subscribe(sub.filter, options=SubscribeOptions(qos=sub.qos, noLocal=True))
        else:
            rc, mid = self._client.subscribe(sub.filter, sub.qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks.add(mid)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        for callback in self._ack_callbacks:
            self._safely(callback, "PUBACK")
        # A broker's ACL refuses a QoS 1 publish only by the PUBACK's reason code (135 "not
        # authorized"): without this a wrong login looks like success.
        if reason is None or not getattr(reason, "is_failure", False):
            return
        self.counters["mqtt_publish_refused"] += 1
        now = self.reactor.seconds()
        if now - self._refusal_logged_at >= 10.0:
            self._refusal_logged_at = now
            log.error("broker refused a publish to {topic}: {reason} ({count} refused so far)",
                      topic=unacknowledged_topic(self._client, mid), reason=str(reason),
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
        self._on_received(msg.topic, bytes(msg.payload), bool(msg.retain))

    def _on_received(self, topic: str, raw: bytes, retain: bool) -> None:
        self.counters["mqtt_received"] += 1
        incoming = Incoming(topic, raw, retain)
        parts, system = topic.split("/"), topic[:1] == "$"  # once, for every filter
        for sub in list(self._subs.values()):
            if sub.matches_levels(parts, system):
                for handler in list(sub.handlers):
                    self._safely(handler, topic, incoming)

    def _safely(self, fn: Callable[..., Any], what: str, *args: Any) -> None:
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

