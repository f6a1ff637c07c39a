"""The MQTT side of the console: every retained device topic it shows, profiles and status
topics into the :class:`DeviceTable`; assignments and profiles out, as ``pnp assign`` publishes
them.

Changes are pushed to the browsers through the :class:`Hub` (Server-Sent Events), coalesced:
a row that changes ten times within ``FLUSH_EVERY`` is sent once, and during a boot storm (a
batch of ``STORM_ROWS`` rows or more) the next batch waits ``FLUSH_STORM``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from console.table import DeviceTable
from tools.assign import Item, message
from tools.commands import Order
from tools.commands import message as command_message
from services.mqtt import Incoming
from services.messages import encode_json, now_iso
from services.runner import Context
from services.topics import is_mac

log = Logger(namespace="console")

# The device topics the console shows, as the deployment ACL lets its login read them
# (deploy/mosquitto/acl). Not `resync` (a SIP password) nor `published` (the working URLs):
# `files` says the same revision and files without them; the broker sends the console neither,
# which spares it three of a first boot's sixteen messages and keeps those secrets out of it
# on a broker without the ACL too.
DEVICE_KINDS = ("discovered", "assignment", "config", "files", "notify", "fetched", "error", "enrolment",
                "rearm", "rotate")

FLUSH_EVERY = 0.25  # seconds
# The console is on no phone's path, yet takes every message of every phone (a ready phone's
# discovery, NOTIFY statuses and enrolment; a first boot's sixteen): at 500 phones a second a
# wakeup per message was most of its CPU, on a machine whose notifier and listener wait for a
# core meanwhile. So it reads the broker at most this often while messages keep coming
# (Bus.pace_reads), far below FLUSH_EVERY. Not longer: what a pause gathers is read in one burst
# of CPU (at 500 first boots a second, 50 ms gathered ~400 messages, several ms the scheduler may
# run ahead of a woken notifier); 20 ms keeps nearly all of the gain (docs/BENCHMARKS.md,
# "Console, fileserver and generator: CPU per ready phone").
READ_PACE = 0.02  # seconds
# A batch this large is a storm: nobody reads hundreds of rows changing four times a second,
# and each row sent is a fold of the device (its payloads parsed). A phone's boot changes its
# row for about a second: batched every half second, it is folded two or three times instead of
# five (in-process, 2,000 phones at 500/s, one list open: 238 us a phone at 0.25 s, 175 at 0.5 s,
# 151 at 1 s; the longest wait for a row stays about a second).
STORM_ROWS = 100
FLUSH_STORM = 0.5  # seconds
ACK_TIMEOUT = 5.0


class NotConnected(Exception):
    pass


class Client:
    """One open event stream: who is watching (for what they may see), and which device."""

    def __init__(self, write: Callable[[bytes], Any], admin: bool, mac: str | None, rows: bool = True) -> None:
        self.write = write
        self.admin = admin
        self.mac = mac
        self.rows = rows  # False: only broker and service events (the services page)


class Hub:
    """Event streams to browsers, fed in batches."""

    def __init__(self, reactor: Any, render_rows: Callable[[list[str], bool], list[dict]],
                 render_timeline: Callable[[str, int, bool], list[dict]]) -> None:
        self.reactor = reactor
        self.clients: set[Client] = set()
        self._render_rows = render_rows
        self._render_timeline = render_timeline
        self._dirty: dict[str, int] = {}  # mac -> timeline events added since the last flush
        self._call: Any = None
        self._every = FLUSH_EVERY  # until the next batch: longer after a storm's
        self.sent = 0

    def changed(self, mac: str, events: int = 1) -> None:
        # Every message of every phone comes here: a dict update, and a timer when none runs
        # (flush clears it first thing).
        dirty = self._dirty
        dirty[mac] = dirty.get(mac, 0) + events
        if self._call is None and self.clients:
            self._call = self.reactor.callLater(self._every, self.flush)

    def flush(self) -> None:
        self._call = None
        dirty, self._dirty = self._dirty, {}
        self._every = FLUSH_STORM if len(dirty) >= STORM_ROWS else FLUSH_EVERY
        if not self.clients or not dirty:
            return
        macs = sorted(dirty)
        for admin in (False, True):
            audience = [c for c in self.clients if c.admin == admin and c.rows]
            if not audience:
                continue
            rows = _event(b"rows", self._render_rows(macs, admin))
            for client in audience:
                client.write(rows)
                if client.mac in dirty:
                    client.write(_event(b"timeline", self._render_timeline(client.mac, dirty[client.mac], admin)))
                self.sent += 1

    def send(self, name: bytes, data: Any) -> None:
        payload = _event(name, data)
        for client in list(self.clients):
            client.write(payload)

    def keepalive(self) -> None:
        # A comment line: proxies and browsers keep a stream open that says something.
        for client in list(self.clients):
            client.write(b": keepalive\n\n")


def _event(name: bytes, data: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class ConsoleService:
    """Bus in, table and hub updated; publishes on request."""

    def __init__(self, ctx: Context, table: DeviceTable, hub: Hub) -> None:
        self.ctx = ctx
        self.table = table
        self.hub = hub
        self.topics = ctx.topics
        self.counters = ctx.counters

    def start(self) -> None:
        bus = self.ctx.bus
        # One filter per kind: the filter names the kind, so a message needs no topic parsing
        # beyond cutting its MAC out.
        # QoS 0: the console only reads these, on a clean session (services/mqtt/bus.py), so QoS 1
        # would redeliver nothing after a reconnect (the session is new; what is retained comes
        # back with the new subscription), and while connected mosquitto drops no more at QoS 0
        # than at 1 (both only past max_queued_messages behind; measured: a subscriber that
        # stopped reading for 150,000 messages got 111,985 at QoS 0, 100,020 at QoS 1). What
        # QoS 1 costs is a PUBACK for every message of every phone: about a sixth of the
        # console's CPU, and the broker's work of tracking each one in flight. The producers
        # still publish at QoS 1: the broker holds every acknowledged write as before.
        for kind in DEVICE_KINDS:
            bus.subscribe(self.topics.devices(kind), self._device_handler(kind), qos=0)
        bus.subscribe(self.topics.profiles(), self.on_profile)
        bus.subscribe(self.topics.services(), self.on_service)
        bus.on_connect(lambda: self.hub.send(b"broker", {"connected": True}))
        bus.on_disconnect(lambda: self.hub.send(b"broker", {"connected": False}))

    @property
    def connected(self) -> bool:
        return bool(self.ctx.bus.connected)

    # --- in ---
    def _device_handler(self, kind: str) -> Callable[[Incoming], None]:
        """The handler of ``devices/+/{kind}``: every phone's every message comes through it, so
        it does the least it can (the payload is parsed when someone reads it)."""
        start = len(self.topics.devices(kind).split("+", 1)[0])  # where the MAC starts
        end = -len(kind) - 1  # and ends: the filter matched exactly "{prefix}/devices/{mac}/{kind}"
        table, hub, counters = self.table, self.hub, self.counters

        def on_device(msg: Incoming) -> None:
            mac = msg.topic[start:end]
            # a MAC the table holds was checked when it came first
            if mac not in table.devices and not is_mac(mac):
                counters["ignored"] += 1
                return
            if table.on_raw(mac, kind, msg.raw, msg.retain, now_iso()):
                counters["device_updates"] += 1
                hub.changed(mac)

        return on_device

    def on_profile(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if info is not None and info.name:
            self.table.on_profile(info.name, _data(msg))

    def on_service(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if info is None or not info.service or not info.instance:
            return  # parse names both for every services topic
        data = _data(msg)
        self.table.on_service(info.service, info.instance, data)
        self.hub.send(b"service", {"service": info.service, "instance": info.instance,
                                   "state": (data or {}).get("state") if isinstance(data, dict) else None})

    # --- out ---
    def assign(self, items: list[Item]) -> defer.Deferred:
        """Publish retained assignments (payload None: unassign); fires True once the broker
        acknowledged them, False when it did not within ACK_TIMEOUT. NotConnected when the
        broker is away: nothing is queued that the user was not told about."""
        if not self.connected:
            return defer.fail(NotConnected())
        for item in items:
            topic, payload = message(self.topics, item)
            self.ctx.bus.publish(topic, payload, retain=True)
            self.counters["assignments_published"] += 1
        return self.ctx.bus.flush(ACK_TIMEOUT)

    def command(self, order: Order) -> defer.Deferred:
        """Publish a retained re-arm or rotate command (tools/commands.py, as ``pnp assign
        --rearm/--rotate`` does); fires as :meth:`assign` does."""
        if not self.connected:
            return defer.fail(NotConnected())
        self.ctx.bus.publish(*command_message(self.topics, order), retain=True)
        self.counters[f"{order.kind}_published"] += 1
        return self.ctx.bus.flush(ACK_TIMEOUT)

    def publish_profile(self, name: str, document: dict | None) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnected())
        payload = b"" if document is None else encode_json(document)
        self.ctx.bus.publish(self.topics.profile(name), payload, retain=True)
        self.counters["profiles_published"] += 1
        return self.ctx.bus.flush(ACK_TIMEOUT)


def _data(msg: Incoming) -> Any:
    if msg.empty:
        return None
    # Unreadable payloads are kept as such: fold() and describe() say so instead of crashing.
    return msg.data if msg.error is None else {"_error": msg.error}


class ConsoleComponent:
    """The running console as the runner sees it: the MQTT side, the web side and its port."""

    def __init__(self, service: ConsoleService, web: Any, listen: Callable[[], Any]) -> None:
        self.service = service
        self.web = web
        self.listen = listen
        self.port: Any = None

    def start(self) -> "ConsoleComponent":
        self.port = self.listen()
        self.service.start()
        self.web.start()
        return self

    def counters(self) -> dict[str, int]:
        return {}  # the console counts in the context's counters

    def stop(self) -> Any:
        self.web.stop()
        return self.port.stopListening()
