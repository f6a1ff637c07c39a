"""The MQTT side of the generator: retained inputs in, ``config`` and ``error`` out.

Subscribes to discoveries, assignments and profiles; hands each message to the :class:`Engine`
and carries out the effects. A changed profile re-renders its devices cooperatively, a slice at
a time, so the reactor keeps serving other messages meanwhile.

The broker is a cache that can lose its last seconds (docs/MQTT.md): the :class:`Keeper` puts
back the configs it lost, re-rendered from what the engine holds, and an assignment that vanished
from the broker is reported (``assignments_lost``), not taken for an unassignment: only an
explicit empty payload unassigns.

With ``PNP_GENERATOR_SHARD=k/n`` it drops the discoveries and assignments of other shards'
MACs before the engine sees them: the engine then knows only its own devices, so everything it
publishes (config, error, their clearing, a profile's re-render) stays within the shard.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from twisted.internet import task
from twisted.logger import Logger

from generator.engine import (
    COMMANDS, Acted, Clear, Credentials, Effect, Engine, Error, Publish, Refused, Unpublish, config_json,
)
from services.mqtt import Incoming
from services.messages import PayloadError, decode_json, encode_flat
from services.retained import Keeper
from services.runner import Context

log = Logger(namespace="generator")

COMMIT_AFTER = 0.1  # seconds


class GeneratorService:
    def __init__(self, ctx: Context, engine: Engine, settle: float) -> None:
        self.ctx = ctx
        self.engine = engine
        self.topics = ctx.topics
        self._settle = settle
        self.shard = ctx.settings.generator_shard
        self._ready_call: Any = None
        self._commit_call: Any = None
        self._ready_callbacks: list[Callable[[], Any]] = []
        # discoveries to render in later turns, in arrival order (render_discovered)
        self._queued: dict[str, None] = {}
        self._turn_call: Any = None  # set while this turn of the reactor has rendered one
        # effects held until the commit at the end of this turn (apply), in order
        self._held: list[list[Effect]] | None = None
        self._release_call: Any = None
        self._stopped = False
        self._cooperator = task.Cooperator(scheduler=lambda x: ctx.reactor.callLater(0, x))
        # assignments the broker replayed since the last (re)connection, and those it lost
        self._replayed: set[str] = set()
        self.lost: set[str] = set()
        self._recovering = True  # the stored assignments are still to be checked (once)
        self.keeper = Keeper(ctx, self.topics.devices("config"), republish=self._put_back)

    def start(self) -> "GeneratorService":
        bus = self.ctx.bus
        bus.on_connect(self._replayed.clear)
        # QoS 0: every phone's every boot sends one, and at QoS 1 each cost a PUBACK (a write
        # to the broker per discovery, a tenth of the generator's CPU for one of a phone whose
        # files are ready). The generator reads on a clean session (services/mqtt/bus.py), so
        # QoS 1 redelivered nothing after a reconnect (the retained discoveries come back with
        # the new subscription), and mosquitto drops no more at QoS 0 than at 1 while connected
        # (both only past max_queued_messages behind, measured: console/service.py). The
        # listener still publishes them at QoS 1: the broker holds each as before.
        bus.subscribe(self.topics.devices("discovered"), self.on_discovered, qos=0)
        bus.subscribe(self.topics.devices("assignment"), self.on_assignment)
        bus.subscribe(self.topics.profiles(), self.on_profile)
        for kind in COMMANDS:
            bus.subscribe(self.topics.devices(kind), self.on_command)
        bus.when_subscribed().addCallback(self._subscribed)
        self.keeper.on_synced(self._check_assignments)
        self.keeper.start()
        if self.shard.count > 1:
            log.info("shard {shard}: rendering only the MACs with crc32(mac) mod {n} = {i}",
                     shard=str(self.shard), n=self.shard.count, i=self.shard.index - 1)
        return self

    def _subscribed(self, _: Any) -> None:
        self._ready_call = self.ctx.reactor.callLater(self._settle, self._become_ready)

    def on_ready(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once the engine is ready (the retained inputs are in)."""
        self._ready_callbacks.append(callback)

    def _become_ready(self) -> None:
        self._ready_call = None
        self.engine.ready = True
        for callback in self._ready_callbacks:
            callback()
        self.apply(self.engine.act_pending())
        macs = self.engine.assigned()
        log.info("rendering {n} assigned devices", n=len(macs))
        self.rerender(macs)

    def stop(self) -> None:
        if self._held is not None:
            if self._release_call is not None and self._release_call.active():
                self._release_call.cancel()
            self._release()  # committed and published, rather than rendered again at the next start
        self._stopped = True
        self.keeper.stop()
        for call in (self._ready_call, self._commit_call, self._turn_call, self._release_call):
            if call is not None and call.active():
                call.cancel()
        self._cooperator.stop()
        self.engine.store.close()

    def _commit_soon(self) -> None:
        # One commit per burst, not per message: a commit costs more than a rendering.
        if self._commit_call is None or not self._commit_call.active():
            self._commit_call = self.ctx.reactor.callLater(COMMIT_AFTER, self._commit)

    def _commit(self) -> None:
        self._commit_call = None
        self._commit_now()

    def _commit_now(self) -> None:
        if self.engine.store.commit():
            self.engine.credentials_committed()

    # --- handlers ---
    def _mine(self, segment: str) -> bool:
        # The raw topic segment, not a corrected spelling: the answer to a badly spelled MAC goes
        # on that segment's error topic, and its clearing must come from the same instance.
        if self.shard.owns(segment):
            return True
        self.ctx.counters["other_shard_skipped"] += 1
        return False

    def on_discovered(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if self._stopped or info is None or info.mac is None or not self._mine(info.mac):
            return
        if self.engine.discovery(info.mac, msg.data):
            self.render_discovered(info.mac)

    def render_discovered(self, mac: str) -> None:
        """Render a device for its phone's discovery: at once if nothing was rendered in this
        turn of the reactor, else in a later turn, one per turn, in arrival order.

        A phone waits for this config (discovery -> config -> fileserver -> NOTIFY), and what a
        read batch publishes leaves only at the batch's end (services/mqtt/connect.py,
        READ_BATCH): rendering every discovery of a batch in turn kept the first phone's config
        behind all the others' renders (~0.3 ms each). Put off, the first config leaves with the
        batch, each later one at the end of its own turn, and no phone waits for renders queued
        after its own."""
        if self._turn_call is None:
            self._turn_call = self.ctx.reactor.callLater(0, self._next_turn)
            self.apply(self.engine.render(mac))
        else:
            self._queued.pop(mac, None)  # a newer discovery of the same phone: queued anew
            self._queued[mac] = None

    def _next_turn(self) -> None:
        self._turn_call = None
        if self._queued and not self._stopped:
            mac = next(iter(self._queued))
            del self._queued[mac]
            self.render_discovered(mac)

    def on_assignment(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if self._stopped or info is None or info.mac is None or not self._mine(info.mac):
            return
        self.ctx.counters["assignments"] += 1
        self._replayed.add(info.mac)
        self.lost.discard(info.mac)
        self.apply(self.engine.assignment(info.mac, msg.raw, msg.data, msg.error))

    def on_profile(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if self._stopped or info is None or info.name is None:
            return
        self.ctx.counters["profiles"] += 1
        macs = self.engine.profile(info.name, msg.raw, msg.data, msg.error)
        self._commit_soon()
        if macs:
            log.info("profile {name} changed: re-rendering {n} devices", name=info.name, n=len(macs))
            self.rerender(macs)

    def on_command(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if self._stopped or info is None or info.mac is None or info.kind is None or not self._mine(info.mac):
            return
        self.apply(self.engine.command(info.kind, info.mac, msg.raw, msg.data, msg.error))

    def rerender(self, macs: list[str]) -> Any:
        d = self._cooperator.coiterate(self._rerender(macs))
        # Stopping the service stops an unfinished re-render; that is not a failure.
        d.addErrback(lambda failure: failure.trap(task.SchedulerStopped))
        return d

    def _rerender(self, macs: Iterable[str]) -> Iterator[None]:
        for mac in macs:
            self.apply(self.engine.render(mac))
            yield None

    # --- effects ---
    def apply(self, effects: list[Effect]) -> None:
        engine = self.engine
        if self._held is None and any(isinstance(e, Publish) and engine.unsaved_credential(e.mac)
                                      for e in effects):
            # A config carrying a new HTTP credential leaves only after the credential is
            # committed (WAL: it then survives kill -9): a phone may fetch that file at once, and
            # a credential the store lost would be replaced by a new one after a restart, locking
            # the phone out. Not on a phone's path: a device that waits for its discovery got its
            # credential, and its commit, beforehand (Engine.render). A pre-staged assignment,
            # rearm and rotate wait here for one commit at the end of this turn, which takes
            # every new credential of the turn (a bulk import: up to a read batch in one commit
            # rather than one commit, ~0.1 ms, each).
            self._held = []
            self._release_call = self.ctx.reactor.callLater(0, self._release)
        if self._held is not None:
            # Whatever follows waits as well, in order: an unassignment in the same turn must not
            # overtake the config it withdraws.
            self._held.append(effects)
            return
        self._carry_out(effects)

    def _release(self) -> None:
        self._release_call = None
        held, self._held = self._held or [], None
        self._commit_now()
        for effects in held:
            self._carry_out(effects)

    def _carry_out(self, effects: list[Effect]) -> None:
        bus = self.ctx.bus
        for effect in effects:
            if isinstance(effect, Publish):
                if self.engine.unsaved_credential(effect.mac):
                    self._commit_now()  # the commit at the end of the turn failed: try again
                # The config first: the fileserver, then the notifier and the phone wait for it;
                # what follows (its fingerprint, the resync credentials) waits for nobody.
                topic, payload = self.topics.device(effect.mac, "config"), config_json(effect.config)
                bus.publish(topic, payload, retain=True)
                self.keeper.put(topic, payload)
                self.ctx.counters["configs_published"] += 1
            elif isinstance(effect, Unpublish):
                topic = self.topics.device(effect.mac, "config")
                bus.publish(topic, b"", retain=True)
                self.keeper.put(topic, b"")
                self.ctx.counters["configs_removed"] += 1
                log.info("{mac}: unassigned; its config is withdrawn", mac=effect.mac)
            elif isinstance(effect, Error):
                self.ctx.publish_error(effect.mac, effect.code, effect.message, effect.field)
                self.ctx.counters["errors"] += 1
                log.warn("{mac}: {message}", mac=effect.mac, message=effect.message)
            elif isinstance(effect, Clear):
                self.ctx.clear_error(effect.mac)
            elif isinstance(effect, Acted):
                self.ctx.counters[f"{effect.kind}_done"] += 1
                log.info("{mac}: {kind} {id}: new HTTP credential", mac=effect.mac, kind=effect.kind,
                         id=effect.id)
            elif isinstance(effect, Refused):
                self.ctx.counters["commands_refused"] += 1
                log.warn("{mac}: {message}", mac=effect.mac, message=effect.message)
            elif isinstance(effect, Credentials):
                # Notifier-only topic (deploy/mosquitto/acl): never on config, which others read.
                payload = encode_flat(effect.credentials) if effect.credentials is not None else b""
                bus.publish(self.topics.device(effect.mac, "resync"), payload, retain=True)
        self._commit_soon()

    # --- the broker as a cache ---
    def _put_back(self, topics: list[str]) -> None:
        """Configs the broker lost: rendered again (the same inputs give the same bytes)."""
        for topic in topics:
            info = self.topics.parse(topic)
            device = self.engine.devices.get(info.mac) if info is not None and info.mac else None
            if device is not None:
                device.published = ""
                self.apply(self.engine.render(device.mac))

    def _check_assignments(self, _lost_ours: bool) -> None:
        """After a (re)connection's replay: assignments we hold that the broker did not replay
        were lost by it (an unassignment is an empty payload, which we would have received)."""
        if self._stopped:
            return  # a replay that ended as we stopped: the store is closed
        if self._recovering:
            self._check_stored()
        gone = {mac for mac, d in self.engine.devices.items()
                if (d.assignment is not None or d.problem is not None) and mac not in self._replayed}
        new = gone - self.lost
        self.lost = gone
        self._report_lost(new)

    def _check_stored(self) -> None:
        """After a start: stored assignments the broker did not replay, whose config we had
        published. Our config still retained means the assignment was cleared while we were
        away (the config came after it: a broker that kept the config kept the assignment,
        unless an empty payload cleared it); config gone too means the broker lost both."""
        records = self.engine.records
        candidates = {mac: payload for mac, payload in self.engine.store.assignments().items()
                      if mac not in self._replayed and self.shard.owns(mac)
                      and mac in records and records[mac].digest}
        if not candidates:
            self._recovering = False
            return
        self.keeper.read(lambda found: self._recover(candidates, found))

    def _recover(self, candidates: dict[str, str], found: dict[str, int]) -> None:
        if self._stopped:
            return
        self._recovering = False
        lost: set[str] = set()
        for mac, payload in sorted(candidates.items()):
            if mac in self._replayed:
                continue  # it came back meanwhile
            if self.topics.device(mac, "config") in found:
                log.info("{mac}: unassigned while we were away; its config is withdrawn", mac=mac)
                self.apply(self.engine.assignment(mac, b"", None, None))
                continue
            raw = payload.encode("utf-8")
            try:
                data, error = decode_json(raw), None
            except PayloadError as exc:
                data, error = None, str(exc)
            self.apply(self.engine.assignment(mac, raw, data, error))
            lost.add(mac)
        self.lost |= lost
        self._report_lost(lost)

    def _report_lost(self, new: set[str]) -> None:
        if not new:
            return
        self.ctx.counters["assignments_lost"] += len(new)
        sample = ", ".join(sorted(new)[:5]) + (", ..." if len(new) > 5 else "")
        log.warn("the broker lost {count} assignments ({sample}): they stay assigned and their "
                 "configs stay published; the assigning system should publish them again",
                 count=len(new), sample=sample)

    def counters(self) -> dict[str, int]:
        s = self.engine.stats
        return {"renders": s.renders, "renders_changed": s.changed, "render_errors": s.errors,
                "devices": len(self.engine.devices)}
