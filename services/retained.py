"""The broker as a cache: a service puts back the retained messages of its own that the broker lost.

mosquitto saves its retained messages every ``autosave_interval`` seconds; a crash loses what
came after the last save, and nothing tells its clients. So a service that owns retained topics
keeps, per topic, a fingerprint of what it last published there (and the payload itself, or a
way to make it again), and a **marker** of its own, retained on
``{prefix}/services/{service}/{instance}/retained``: the XOR of all those fingerprints. The marker
is published after the messages it covers, on the same connection, so a broker that still holds
our latest marker holds everything before it (mosquitto handles one connection's packets in
order and saves all its retained messages at once).

After every (re)connection, once the subscriptions are acknowledged, a non-retained *sync*
message is sent to the marker topic: when it comes back, every retained message that the
subscriptions brought has arrived before it (one connection, one queue), so the end of the
replay is known, not guessed from silence. Then:

- the marker holds the digest of what we hold now: nothing of ours was lost;
- otherwise (marker older, missing or unreadable, or changes since it that the broker may have
  lost with the old connection): our own topics are read back (subscribed again, with one more
  sync behind them) and only what is missing or different is published again (counted as
  ``retained_restored`` and named in one log line).

The marker goes out at QoS 0 and only while connected and checked: a QoS 1 marker that paho
queued across a broker crash would be replayed on reconnect and vouch for messages the broker lost.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from twisted.logger import Logger

from services.mqtt import Incoming
from services.messages import now_iso

log = Logger(namespace="retained")

MARK_AFTER = 1.0  # seconds: one marker per burst of changes, not one per message


def fingerprint(topic: str, payload: bytes) -> int:
    """What identifies one retained message: its topic and exact bytes (128 bits of sha256)."""
    return int.from_bytes(hashlib.sha256(topic.encode("utf-8") + b"\0" + payload).digest()[:16], "big")


def hex128(value: int) -> str:
    return value.to_bytes(16, "big").hex()


class Keeper:
    """The retained messages one service owns under ``own`` (a topic filter, or several), kept so
    that what the broker loses can be put back.

    ``republish(topics)``, when given, publishes those topics again from the service's own
    state (the generator re-renders); without it the keeper keeps every payload and publishes
    them itself. ``on_synced(lost)`` callbacks run after each connection's replay has ended,
    with whether the broker lost messages of ours."""

    def __init__(self, ctx: Any, own: str | tuple[str, ...],
                 republish: Callable[[list[str]], None] | None = None) -> None:
        self.ctx = ctx
        self.own = (own,) if isinstance(own, str) else own
        self.republish = republish
        self.topic = f"{ctx.topics.service(ctx.name, ctx.settings.instance)}/retained"
        self.prints: dict[str, int] = {}
        self.payloads: dict[str, bytes] = {}
        self.digest = 0  # XOR of the prints
        self.checked = False  # this connection's check is done: markers may go out
        self._broker_marker: int | None = None
        self._dirty: set[str] = set()  # changed since the last marker we sent
        self._sync = ""
        self._reading: dict[str, int] | None = None
        self._read_done: Callable[[dict[str, int]], Any] | None = None
        self._mark_call: Any = None
        self._synced_callbacks: list[Callable[[bool], Any]] = []

    def start(self) -> None:
        bus = self.ctx.bus
        bus.subscribe(self.topic, self._on_marker)
        bus.on_connect(self._connected)
        bus.on_disconnect(self._disconnected)
        if bus.connected:
            self._connected()

    def stop(self) -> None:
        """Send the marker now if it is due (a clean stop leaves an exact one behind)."""
        if self._mark_call is not None and self._mark_call.active():
            self._mark_call.cancel()
            self._mark()

    def on_synced(self, callback: Callable[[bool], Any]) -> None:
        self._synced_callbacks.append(callback)

    # --- what the service publishes ---
    def put(self, topic: str, payload: bytes) -> None:
        """Record a retained publish of ours (an empty payload: the topic was cleared)."""
        old = self.prints.pop(topic, None)
        if old is not None:
            self.digest ^= old
        new = None
        if payload:
            new = self.prints[topic] = fingerprint(topic, payload)
            self.digest ^= new
            if self.republish is None:
                self.payloads[topic] = payload
        elif self.republish is None:
            self.payloads.pop(topic, None)
        if old != new:
            self._dirty.add(topic)
            if self._mark_call is None:
                self._mark_soon()

    def marker(self) -> bytes:
        return json.dumps({"digest": hex128(self.digest), "count": len(self.prints), "at": now_iso(),
                           "v": 1}, sort_keys=True, separators=(",", ":")).encode()

    # --- the check after each connection ---
    def _connected(self) -> None:
        self.checked = False
        self._broker_marker = None
        if self._reading is not None:  # a read-back cut short by the lost connection
            self._reading = self._read_done = None
            self._stop_reading()
        self.ctx.bus.when_subscribed().addCallback(lambda _: self._send_sync())

    def _disconnected(self) -> None:
        self.checked = False

    def _send_sync(self) -> None:
        self._sync = os.urandom(8).hex()
        self.ctx.bus.publish(self.topic, json.dumps({"sync": self._sync}).encode(), retain=False)

    def _on_marker(self, msg: Incoming) -> None:
        if msg.retain:
            data = msg.data if isinstance(msg.data, dict) else {}
            try:
                self._broker_marker = int(str(data.get("digest", "")), 16)
            except ValueError:
                self._broker_marker = None
            return
        data = msg.data
        if not isinstance(data, dict) or data.get("sync") != self._sync or not self._sync:
            return  # our own marker coming back live, or an old sync
        self._sync = ""
        if self._reading is not None:
            found, done = self._reading, self._read_done
            self._reading = self._read_done = None
            self._stop_reading()
            if done is not None:
                done(found)
        else:
            self._replayed()

    def _replayed(self) -> None:
        """The replay after a (re)connection has ended: was anything of ours lost?"""
        if self._broker_marker == self.digest or (not self.prints and not self._dirty):
            # The broker holds the marker of exactly what we hold: nothing of ours was lost.
            self._done(lost=False)
            return
        # An older marker, none, or changes since it (which the broker may have lost with the
        # old connection): read our own topics back and put back what differs.
        self.read(self._compare)

    def read(self, done: Callable[[dict[str, int]], Any]) -> bool:
        """Read what the broker holds retained on our topics: ``done({topic: fingerprint})``
        once its replay has ended. False (and nothing done) while another read is under way."""
        if self._reading is not None or not self.ctx.bus.connected:
            return False
        self._reading, self._read_done = {}, done
        bus = self.ctx.bus
        for own in self.own:
            # No Local: mosquitto still replays the retained messages, ours included (it checks
            # No Local only when it forwards a live publish), and our own live ones, which tell
            # nothing here, stay on the broker (tests/test_mqtt_bus.py checks it on mosquitto)
            bus.subscribe(own, self._on_own, replay=True, no_local=True)
        bus.when_subscribed().addCallback(lambda _: self._send_sync())
        return True

    def _stop_reading(self) -> None:
        for own in self.own:
            self.ctx.bus.remove_handler(own, self._on_own)

    def _on_own(self, msg: Incoming) -> None:
        if self._reading is not None and msg.retain and msg.raw:
            self._reading[msg.topic] = fingerprint(msg.topic, msg.raw)

    def _compare(self, found: dict[str, int]) -> None:
        missing = sorted(t for t, p in self.prints.items() if t not in found)
        different = sorted(t for t, p in self.prints.items() if t in found and found[t] != p)
        # cleared by us lately, yet back on the broker (it lost the clearing)
        different += sorted(t for t in self._dirty if t not in self.prints and t in found)
        again = missing + different
        if again:
            self.ctx.counters["retained_restored"] += len(again)
            log.warn("the broker lost {count} retained messages of ours ({missing} missing, "
                     "{different} older; of {total} on {filter}): publishing them again",
                     count=len(again), missing=len(missing), different=len(different),
                     total=len(self.prints), filter=" ".join(self.own))
            self._publish_again(again)
        self._done(lost=bool(again))

    def _publish_again(self, topics: list[str]) -> None:
        cleared = [t for t in topics if t not in self.prints]
        for topic in cleared:  # a clearing the broker may have lost: an old message came back
            self.ctx.bus.publish(topic, b"", retain=True)
        topics = [t for t in topics if t in self.prints]
        if self.republish is not None:
            if topics:
                self.republish(topics)
            return
        for topic in topics:
            payload = self.payloads.get(topic)
            if payload:
                self.ctx.bus.publish(topic, payload, retain=True)

    def _done(self, lost: bool) -> None:
        self.checked = True
        for callback in list(self._synced_callbacks):
            try:
                callback(lost)
            except Exception:
                log.failure("after the retained check")
        if self._broker_marker == self.digest:
            self._dirty.clear()
        elif self._mark_call is None:
            self._mark_soon()

    # --- the marker ---
    def _mark_soon(self) -> None:
        if self._mark_call is None or not self._mark_call.active():
            self._mark_call = self.ctx.reactor.callLater(MARK_AFTER, self._mark)

    def _mark(self) -> None:
        self._mark_call = None
        bus = self.ctx.bus
        if not bus.connected or not self.checked:
            return  # the next connection's check sends it
        bus.publish(self.topic, self.marker(), retain=True, qos=0)
        self._broker_marker = self.digest
        self._dirty.clear()
