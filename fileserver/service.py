"""The MQTT side of the fileserver: configs in, ``published`` and ``fetched`` out.

The store is the truth the HTTP side serves from; the broker only feeds it. So a restart with
the broker away serves what was stored, and a bad config never replaces the last good files.
Only an empty ``config`` removes a device (received, or cleared while we were away: see
:meth:`FileService._check_configs`): a config the broker lost (docs/MQTT.md) is no
unassignment, and the generator puts it back. The :class:`Keeper` puts back the
``published`` messages the broker lost.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from services.mqtt import Incoming
from services.burstlog import BurstLog
from services.messages import Fetched, encode_json, now_iso
from services.retained import Keeper
from services.runner import Context
from fileserver.abuse import NotFoundLimiter
from fileserver.catalog import Catalog
from fileserver.files import DeviceFiles, Rejected, ServedFile, decode_config
from fileserver.metrics import Metrics
from fileserver.provision import ProvisionTracker
from fileserver.resource import Policy
from fileserver.store import Store

log = Logger(namespace="fileserver")

class FileService:
    def __init__(self, ctx: Context, store: Store, catalog: Catalog, policy: Policy,
                 limiter: NotFoundLimiter, metrics: Metrics) -> None:
        self.ctx = ctx
        self.store = store
        self.catalog = catalog
        self.policy = policy
        self.limiter = limiter
        self.metrics = metrics
        self.topics = ctx.topics
        self.tracker = ProvisionTracker(store.fetch_states())
        self.errored = store.errored()
        # what the broker holds retained on devices/{mac}/published (our own earlier messages)
        self.broker_published: dict[str, bytes] = {}
        self._seen_config: set[str] = set()
        self._restored: set[str] = set()  # whose published the keeper put back since connecting
        self.configs_missing = 0  # stored devices whose config the broker did not replay
        self.keeper = Keeper(ctx, self.topics.devices("published"), republish=self._put_back)
        # a line per stored config and per provisioned phone, except in a storm of them
        self._log_stored = BurstLog(ctx.reactor, lambda n: log.info(
            "stored {count} more configs (not logged one by one)", count=n))
        self._log_provisioned = BurstLog(ctx.reactor, lambda n: log.info(
            "{count} more phones provisioned (not logged one by one)", count=n))
        self.policy.discovered_ip = store.discovered_ips()
        for device in store.load():
            self.catalog.set(device)
            # what the last run left retained, as far as we know: the keeper checks it
            self.keeper.put(self.topics.device(device.mac, "published"),
                            self.catalog.published(device.mac).to_json())
        log.info("serving {devices} devices ({files} files) from the store",
                 devices=len(catalog.devices), files=catalog.file_count)

    def start(self) -> None:
        bus = self.ctx.bus
        # published first: its retained messages arrive before the configs that are compared to it
        bus.subscribe(self.topics.devices("published"), self.on_published)
        bus.subscribe(self.topics.devices("config"), self.on_config)
        # Behind a load balancer a phone's two downloads may land on different instances:
        # what the others served counts toward the reboot-and-compare here too.
        bus.subscribe(self.topics.devices("fetched"), self.on_fetched)
        if self.policy.pin_ip:
            bus.subscribe(self.topics.devices("discovered"), self.on_discovered)
        bus.on_connect(self._connected)
        if bus.connected:
            self._connected()
        self.keeper.on_synced(self._check_configs)
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()
        self._log_stored.flush()
        self._log_provisioned.flush()

    # --- MQTT handlers ---
    def _connected(self) -> None:
        self._seen_config = set()
        # What the broker holds is replayed now (published first): a broker restarted from an
        # older save may lack some, and those must not be taken as already published.
        self.broker_published = {}
        self._restored = set()

    def _check_configs(self, lost_ours: bool) -> None:
        """After a (re)connection's replay, a stored device whose config did not come back:

        - its ``published`` did come back: the config was cleared while we were away (it was
          published before our ``published``, so a broker that kept the later one kept it too,
          unless an empty payload cleared it): the device is removed;
        - its ``published`` is gone too, and the broker lost nothing of ours (our marker is
          intact): another fileserver cleared it after the config was cleared: removed;
        - its ``published`` is gone too, and the broker lost messages of ours (or the keeper
          just put this one back): the broker lost both. That is no unassignment: the device
          stays served, and the generator puts back its config."""
        cleared, missing = [], []
        for mac in [m for m in self.catalog.devices if m not in self._seen_config]:
            if mac in self._restored or (lost_ours and mac not in self.broker_published):
                missing.append(mac)
            else:
                cleared.append(mac)
        for mac in cleared:
            log.info("{mac}: its config was cleared while we were away", mac=mac)
            self._remove(mac)
        self.configs_missing = len(missing)
        if missing:
            sample = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
            log.warn("the broker lost the config of {count} stored devices ({sample}): still "
                     "served; only an empty config payload removes a device", count=len(missing),
                     sample=sample)

    def _put_back(self, topics: list[str]) -> None:
        for topic in topics:
            info = self.topics.parse(topic)
            if info is not None and info.mac in self.catalog.devices:
                if info.mac not in self.broker_published:  # missing, not merely older
                    self._restored.add(info.mac)
                self.broker_published.pop(info.mac, None)
                self._publish(info.mac)

    def on_published(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if info is None or not info.mac_ok:
            return
        if msg.empty:
            self.broker_published.pop(info.mac, None)
        else:
            self.broker_published[info.mac] = msg.raw

    def on_fetched(self, msg: Incoming) -> None:
        data = msg.data
        if not isinstance(data, dict) or data.get("server") in (None, "", self.ctx.settings.instance):
            return  # ours (or from a fileserver too old to say): already counted when served
        info = self.topics.parse(msg.topic)
        name, sha, status = data.get("file"), data.get("sha256"), data.get("status")
        if (info is None or not info.mac_ok or not isinstance(name, str) or not isinstance(sha, str)
                or status not in (200, 304)):
            return
        outcome = self.tracker.record(info.mac, name, status, sha)
        if data.get("provisioned") is True and not outcome.provisioned:
            outcome = self.tracker.record(info.mac, name, 304, sha)
        if outcome.changed:
            self.store.set_fetch_state(info.mac, name, outcome.served, outcome.provisioned_sha)

    def on_config(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if info is None or not info.mac_ok:
            self.ctx.counters["configs_ignored"] += 1
            return
        mac = info.mac
        self._seen_config.add(mac)
        if msg.empty:
            self._remove(mac)
            self._resolve_error(mac)
            return
        try:
            if msg.error:
                raise Rejected("payload", msg.error)
            device = decode_config(mac, msg.data)
        except Rejected as exc:
            self.ctx.counters["configs_rejected"] += 1
            log.warn("{mac}: config refused, the last good files stay served: {why}", mac=mac, why=str(exc))
            self.ctx.publish_error(mac, exc.code, str(exc), exc.field)
            self.errored.add(mac)
            self.store.set_errored(mac, True)
            return
        if self.catalog.devices.get(mac) != device:
            self.store.put(device)
            self.catalog.set(device)
            self.ctx.counters["configs_stored"] += 1
            self._log_stored(lambda: log.info("{mac}: stored revision {revision} ({n} files)", mac=mac,
                                              revision=device.revision, n=len(device.files)))
        self._resolve_error(mac)
        self._publish(mac)

    def on_discovered(self, msg: Incoming) -> None:
        info = self.topics.parse(msg.topic)
        if info is None or not info.mac_ok:
            return
        ip = msg.data.get("ip") if isinstance(msg.data, dict) else None
        if msg.empty or not isinstance(ip, str) or not ip:
            ip = None
        if self.policy.discovered_ip.get(info.mac) == ip:
            return
        if ip is None:
            self.policy.discovered_ip.pop(info.mac, None)
        else:
            self.policy.discovered_ip[info.mac] = ip
        self.store.set_discovered_ip(info.mac, ip)

    # --- what the HTTP side reports ---
    def fetched(self, device: DeviceFiles, served: ServedFile, status: int, client: str, ua: str) -> None:
        outcome = self.tracker.record(device.mac, served.name, status, served.sha256)
        if outcome.changed:
            self.store.set_fetch_state(device.mac, served.name, outcome.served, outcome.provisioned_sha)
            if outcome.provisioned:
                self._log_provisioned(lambda: log.info(
                    "{mac}: provisioned ({name} sha256 {sha} fetched again)", mac=device.mac,
                    name=served.name, sha=served.sha256[:12]))
        # Fetched's fields, encoded without dataclasses.asdict: this runs once per download
        event = {"file": served.name, "sha256": served.sha256, "status": status, "client": client,
                 "user_agent": ua, "provisioned": outcome.provisioned, "at": now_iso(),
                 "revision": device.revision, "server": self.ctx.settings.instance, "v": Fetched.v}
        self.ctx.bus.publish(self.topics.device(device.mac, "fetched"), encode_json(event), retain=True)

    # --- internals ---
    def _publish(self, mac: str) -> None:
        payload = self.catalog.published(mac).to_json()
        if self.broker_published.get(mac) == payload:
            return
        self.broker_published[mac] = payload
        topic = self.topics.device(mac, "published")
        self.ctx.bus.publish(topic, payload, retain=True)
        self.keeper.put(topic, payload)

    def _remove(self, mac: str) -> None:
        had = self.catalog.remove(mac) is not None
        if had:
            self.store.remove(mac)
            self.tracker.forget(mac)
            self.ctx.counters["devices_removed"] += 1
            log.info("{mac}: unassigned; its files are no longer served", mac=mac)
        if had or mac in self.broker_published:
            self.broker_published.pop(mac, None)
            topic = self.topics.device(mac, "published")
            self.ctx.bus.publish(topic, b"", retain=True)
            self.keeper.put(topic, b"")

    def _resolve_error(self, mac: str) -> None:
        if mac in self.errored:
            self.errored.discard(mac)
            self.store.set_errored(mac, False)
            self.ctx.clear_error(mac)

    # --- numbers ---
    def provisioned_devices(self) -> int:
        return sum(
            1 for d in self.catalog.devices.values()
            if any(self.tracker.is_provisioned(d.mac, f.name, f.sha256) for f in d.files.values()))

    def gauges(self) -> dict[str, tuple[str, float]]:
        now = self.ctx.reactor.seconds()
        return {
            "files_stored": ("Device files stored and served.", self.catalog.file_count),
            "devices_stored": ("Devices with files.", len(self.catalog.devices)),
            "devices_provisioned": ("Devices that fetched the same sha256 again after a 200.",
                                    self.provisioned_devices()),
            "clients_refused": ("Clients refused now for collecting too many 404s.",
                                self.limiter.banned_count(now)),
            "mqtt_connected": ("1 while the broker connection is up.", int(self.ctx.bus.connected)),
        }

    def health(self) -> dict[str, Any]:
        # "degraded" (and /healthz 503) while the broker is away past its grace or the store
        # cannot be written; files are still served from memory meanwhile
        return {**self.ctx.health.summary(), "devices": len(self.catalog.devices),
                "files": self.catalog.file_count, "mqtt_connected": self.ctx.bus.connected}

    def counters(self) -> dict[str, int]:
        out = self.metrics.counters()
        out.update(devices=len(self.catalog.devices), files=self.catalog.file_count,
                   provisioned=self.provisioned_devices(), clients_banned=self.limiter.bans,
                   configs_missing=self.configs_missing)
        return out


class Fileserver:
    """The running service as the runner sees it: counters, and a clean stop."""

    def __init__(self, service: FileService, port: Any, store: Store) -> None:
        self.service = service
        self.port = port
        self.store = store

    @property
    def url_port(self) -> int:
        return self.port.getHost().port

    def counters(self) -> dict[str, int]:
        return self.service.counters()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self.service.stop()
        yield defer.maybeDeferred(self.port.stopListening)
        self.store.close()
