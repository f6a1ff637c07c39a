"""The MQTT side of the fileserver: configs in, ``published``, ``files`` and ``fetched`` out.

The store is the truth the HTTP side serves from; the broker only feeds it. So a restart with
the broker away serves what was stored, and a bad config never replaces the last good files.
What to keep, serve, publish and remove is the :class:`~fileserver.core.FileCore`'s decision;
this glue parses topics, hands the core each message and carries out its effects. The
:class:`Keeper` puts back the ``published``, ``files`` and ``enrolment`` messages the broker lost.
A sweep closes the enrolment windows that passed (each event checks its device's too).
"""

from __future__ import annotations

from functools import partial

from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from services.mqtt import Incoming
from services.burstlog import BurstLog
from services.messages import ErrorReport, encode_flat, encode_json, now_iso
from services.retained import Keeper
from services.runner import Context
from fileserver.abuse import NotFoundLimiter
from fileserver.core import (
    Announce, Conflict, Effect, FileCore, Missing, Refuse, Remove, Report, Resolve, Save,
    SaveEnrolment, SaveFetch, SaveRetired, enrolment_payload,
)
from fileserver.files import DeviceFiles, ServedFile
from fileserver.metrics import Metrics
from fileserver.store import Store

log = Logger(namespace="fileserver")

# How long a ready phone's candidate (its first discovery while enrolling) waits to be announced
# on ``enrolment``, with every other one of that time: one write to the broker (whose PUBACKs come
# back together) for a storm's hundreds, instead of a write and a PUBACK's wakeup per phone. It is
# on no phone's path: the gate uses the candidate at once, the NOTIFY does not wait for it
# (``published`` does not change), and only readers of ``enrolment`` (the console, a PBX) see it
# up to this much later. The candidate itself is saved at once (with the turn's commit): the pin
# is what keeps a spoofed SUBSCRIBE from another address a conflict, across a restart too
# (docs/SECURITY.md, item 12, counts on it).
HOLD_CANDIDATES = 0.1  # seconds


class FileService:
    def __init__(self, ctx: Context, core: FileCore, store: Store, limiter: NotFoundLimiter,
                 metrics: Metrics) -> None:
        self.ctx = ctx
        self.core = core
        self.store = store
        self.limiter = limiter
        self.metrics = metrics
        self.topics = ctx.topics
        self.keeper = Keeper(ctx, (self.topics.devices("published"), self.topics.devices("files"),
                                   self.topics.devices("enrolment")),
                             republish=self._put_back)
        self._stored: list[DeviceFiles] = []
        self._release_call: Any = None  # the held candidates' release, while some wait
        self._stopped = False
        # often enough that a window closes within a minute of its end, and no more
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = ctx.reactor
        # a line per stored config and per provisioned phone, except in a storm of them
        self._log_stored = BurstLog(ctx.reactor, lambda n: log.info(
            "stored {count} more configs (not logged one by one)", count=n))
        self._log_provisioned = BurstLog(ctx.reactor, lambda n: log.info(
            "{count} more phones provisioned (not logged one by one)", count=n))

    def load(self, devices: list[DeviceFiles]) -> None:
        """What the store held: served from the start."""
        self._stored = devices

    def now(self) -> float:
        return float(self.ctx.reactor.seconds())

    def start(self) -> "FileService":
        catalog = self.core.catalog
        self.apply(self.core.load(self._stored, self.now()))
        self._stored = []
        for mac, record in self.core.enrolments.records.items():
            self.keeper.put(self.topics.device(mac, "enrolment"), enrolment_payload(record))
        for mac in catalog.devices:
            # what the last run left retained, as far as we know: the keeper checks it
            self.keeper.put(self.topics.device(mac, "published"), self.core.published_payload(mac))
            self.keeper.put(self.topics.device(mac, "files"), catalog.files_json(mac))
        log.info("serving {devices} devices ({files} files) from the store",
                 devices=len(catalog.devices), files=catalog.file_count)
        bus = self.ctx.bus
        # published first: its retained messages arrive before the configs that are compared to it
        bus.subscribe(self.topics.devices("published"), self.on_published, no_local=True)
        bus.subscribe(self.topics.devices("files"), self.on_files, no_local=True)
        # before the configs too: a rebuilt store takes its epochs back before they open new ones
        bus.subscribe(self.topics.devices("enrolment"), self.on_enrolment, no_local=True)
        bus.subscribe(self.topics.devices("config"), self.on_config)
        # other instances' downloads count here; our own were counted when served, and their
        # echo (a QoS 1 message in and its PUBACK out per download) cost a sixth of the CPU of
        # serving one: the broker keeps them (No Local). After a rebuilt store the refill has
        # subscribed first, wanting our own retained ones, and then the filter gets them all.
        bus.subscribe(self.topics.devices("fetched"), self.on_fetched, no_local=True)
        # QoS 0, as the generator's (generator/service.py says why that loses nothing on a clean
        # session): a discovery of a device that is not enrolling (most of a storm's) then costs
        # no PUBACK, and a candidate's PUBACK no bytes beside its enrolment message.
        bus.subscribe(self.topics.devices("discovered"), self.on_discovered, qos=0)
        bus.on_connect(self.core.connected)
        if bus.connected:
            self.core.connected()
        self.keeper.on_synced(lambda lost_ours: self.apply(self.core.replayed(lost_ours)))
        self.keeper.start()
        self._sweep.start(min(60.0, max(1.0, self.core.enrolments.window / 4)), now=False)
        return self

    def sweep(self) -> None:
        self.apply(self.core.sweep(self.now()))

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        if self._release_call is not None and self._release_call.active():
            self._release_call.cancel()
        self._stopped = True  # a discovery read from now on is announced at once
        self._release()  # announced if the broker is still there
        self.keeper.stop()
        self._log_stored.flush()
        self._log_provisioned.flush()

    # --- MQTT handlers ---
    def _mac(self, msg: Incoming) -> str | None:
        return self._mac_of(msg.topic)

    def _mac_of(self, topic: str) -> str | None:
        info = self.topics.parse(topic)
        return info.mac if info is not None and info.mac_ok else None

    def _put_back(self, topics: list[str]) -> None:
        # a device's two topics (published, files) lost together: one put-back
        macs = list(dict.fromkeys(mac for mac in map(self._mac_of, topics) if mac is not None))
        self.apply(self.core.lost(macs))

    def on_published(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is not None:
            self.core.published(mac, None if msg.empty else msg.raw)

    def on_files(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is not None:
            self.core.files(mac, None if msg.empty else msg.raw)

    def on_enrolment(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is not None:
            self.apply(self.core.enrolment(mac, None if msg.empty else msg.raw))

    def on_fetched(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is not None:
            self.apply(self.core.fetched_elsewhere(mac, msg.data, self.now()))

    def on_config(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            self.ctx.counters["configs_ignored"] += 1
            return
        self.apply(self.core.config(mac, msg.data, msg.error, msg.empty, self.now()))

    def on_discovered(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None or msg.empty or not self.core.watches(mac):
            # a discovery that expired or was cleared says nothing about who claims it; one of
            # a device that is not enrolling moves nothing (its JSON is not parsed)
            return
        data = msg.data
        ip = data.get("ip") if isinstance(data, dict) else None
        if not isinstance(ip, str) or not ip or len(ip) > 64:
            return
        self.apply(self.core.discovered(mac, ip, self.now(), hold=not self._stopped))
        if self.core.held and self._release_call is None:
            self._release_call = self.ctx.reactor.callLater(HOLD_CANDIDATES, self._release)

    def _release(self) -> None:
        self._release_call = None
        self.apply(self.core.release())

    # --- what the HTTP side reports ---
    def fetched(self, device: DeviceFiles, served: ServedFile, status: int, client: str, ua: str,
                auth: str = "bootstrap") -> None:
        self.apply(self.core.served(device, served, status, client, ua, now_iso(), self.now(), auth))

    # --- effects ---
    def apply(self, effects: list[Effect]) -> None:
        # in the order the core gave them (it orders them: published before files, a save
        # before what announces it); one look-up per effect, not a chain of isinstance tests
        handlers = self._handlers
        for effect in effects:
            handlers[type(effect)](self, effect)

    def _announce(self, effect: Announce) -> None:
        topic = self.topics.device(effect.mac, effect.kind)
        self.ctx.bus.publish(topic, effect.payload, retain=True)
        self.keeper.put(topic, effect.payload)

    def _report(self, effect: Report) -> None:
        # once per download: without to_json()'s deep copy
        self.ctx.bus.publish(self.topics.device(effect.mac, "fetched"), encode_flat(effect.fetched),
                             retain=True)

    def _save_retired(self, effect: SaveRetired) -> None:
        self.store.set_retired(effect.mac, effect.digest)

    def _save_fetch(self, effect: SaveFetch) -> None:
        self.store.set_fetch_state(effect.mac, effect.name, effect.served, effect.provisioned_sha)
        if effect.provisioned:
            self._log_provisioned(partial(
                log.info, "{mac}: provisioned ({name} sha256 {sha} fetched again)",
                mac=effect.mac, name=effect.name, sha=effect.provisioned_sha[:12]))

    def _save(self, effect: Save) -> None:
        self.store.put(effect.device)
        self._log_stored(partial(
            log.info, "{mac}: stored revision {revision} ({n} files)",
            mac=effect.device.mac, revision=effect.device.revision,
            n=len(effect.device.files)))

    def _remove(self, effect: Remove) -> None:
        if effect.away:
            log.info("{mac}: its config was cleared while we were away", mac=effect.mac)
        self.store.remove(effect.mac)
        log.info("{mac}: unassigned; its files are no longer served", mac=effect.mac)

    def _refuse(self, effect: Refuse) -> None:
        log.warn("{mac}: config refused, the last good files stay served: {why}",
                 mac=effect.mac, why=effect.message)
        self.ctx.publish_error(effect.mac, effect.code, effect.message, effect.field)
        self.store.set_errored(effect.mac, True)

    def _resolve(self, effect: Resolve) -> None:
        self.store.set_errored(effect.mac, False)
        self.ctx.clear_error(effect.mac)

    def _save_enrolment(self, effect: SaveEnrolment) -> None:
        # not logged: the retained enrolment topic says it, and a boot storm moves many
        self.store.set_enrolment(effect.mac, effect.record)

    def _conflict(self, effect: Conflict) -> None:
        log.warn("{mac}: enrolment conflict: {why}", mac=effect.mac, why=effect.message)
        report = ErrorReport(service=self.ctx.name, code="conflict", message=effect.message,
                             at=now_iso()).to_dict()
        report["addresses"] = list(effect.addresses)
        self.ctx.bus.publish(self.topics.device(effect.mac, "error"), encode_json(report),
                             retain=True)

    def _missing(self, effect: Missing) -> None:
        macs = effect.macs
        sample = ", ".join(macs[:5]) + (", ..." if len(macs) > 5 else "")
        log.warn("the broker lost the config of {count} stored devices ({sample}): still "
                 "served; only an empty config payload removes a device", count=len(macs),
                 sample=sample)

    # every kind of Effect (fileserver.core) and what carries it out
    _handlers: dict[type, Callable[["FileService", Any], None]] = {
        Announce: _announce, Report: _report, SaveRetired: _save_retired, SaveFetch: _save_fetch,
        Save: _save, Remove: _remove, Refuse: _refuse, Resolve: _resolve,
        SaveEnrolment: _save_enrolment, Conflict: _conflict, Missing: _missing,
    }

    # --- numbers ---
    def gauges(self) -> dict[str, tuple[str, float]]:
        now = self.ctx.reactor.seconds()
        catalog = self.core.catalog
        return {
            "files_stored": ("Device files stored and served.", catalog.file_count),
            "devices_stored": ("Devices with files.", len(catalog.devices)),
            "devices_provisioned": ("Devices that fetched the same sha256 again after a 200.",
                                    self.core.provisioned_devices()),
            "devices_enrolling": ("Devices whose bootstrap URL works now (enrolling).",
                                  sum(1 for r in self.core.enrolments.records.values()
                                      if r.enrolling(now))),
            "clients_refused": ("Clients refused now for collecting too many 404s.",
                                self.limiter.banned_count(now)),
            "mqtt_connected": ("1 while the broker connection is up.", int(self.ctx.bus.connected)),
        }

    def health(self) -> dict[str, Any]:
        # "degraded" (and /healthz 503) while the broker is away past its grace or the store
        # cannot be written; files are still served from memory meanwhile
        catalog = self.core.catalog
        return {**self.ctx.health.summary(), "devices": len(catalog.devices),
                "files": catalog.file_count, "mqtt_connected": self.ctx.bus.connected}

    def counters(self) -> dict[str, int]:
        catalog = self.core.catalog
        out = self.metrics.counters()
        out.update(devices=len(catalog.devices), files=catalog.file_count,
                   provisioned=self.core.provisioned_devices(), clients_banned=self.limiter.bans,
                   configs_missing=self.core.configs_missing)
        return out


class Fileserver:
    """The running service as the runner sees it: the MQTT glue and the HTTP port."""

    def __init__(self, service: FileService, listen: Callable[[], Any], store: Store) -> None:
        self.service = service
        self.listen = listen
        self.store = store
        self.port: Any = None

    @property
    def url_port(self) -> int:
        return self.port.getHost().port

    def start(self) -> "Fileserver":
        try:
            self.port = self.listen()
        except Exception:
            self.store.close()
            raise
        self.service.start()
        return self

    def counters(self) -> dict[str, int]:
        return self.service.counters()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self.service.stop()
        yield defer.maybeDeferred(self.port.stopListening)
        self.store.close()
