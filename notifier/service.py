"""The notifier: from retained discoveries, publications and downloads on MQTT to NOTIFYs on the
wire, and their outcome back on ``devices/{mac}/notify``.

Each ``notify`` it publishes is kept in memory by a :class:`Keeper`, which puts back the ones a
broker restarted from an older save lost (a restart of the notifier itself forgets them: the
outcome of a NOTIFY is a report, the sent log in ``notifier.db`` is what matters)."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from services import netif
from services.burstlog import BurstLog
from services.bus import Incoming
from services.messages import (
    Discovered, Fetched, NotifyStatus, PayloadError, Published, encode_json, now_iso,
)
from services.retained import Keeper
from services.sip.transaction import Outcome, Result, Timers

from notifier import build, decide
from notifier.protocol import NotifyEndpoint
from notifier.settings import IN_DIALOG
from notifier.state import Provision, Store, epoch

log = Logger(namespace="notifier")

# A ``fetched`` that says a phone runs our config, as the fileserver (or any JSON encoder) writes
# it. Half the messages of a boot storm are first downloads, ``provisioned`` false: this spares
# them the topic, JSON and payload parsing (a phone's escaped key would only be missed).
_PROVISIONED = re.compile(rb'"provisioned"\s*:\s*true')


class Notifier:
    def __init__(self, ctx: Any, clock: Any = None, wall: Callable[[], float] = time.time,
                 store: Store | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.reactor = ctx.reactor
        self.clock = clock if clock is not None else ctx.reactor
        self.wall = wall
        self.counters_ = ctx.counters
        if self.settings.sip_t2 < self.settings.sip_t1:
            raise ValueError(f"PNP_SIP_T2 ({self.settings.sip_t2}) must not be below PNP_SIP_T1 "
                             f"({self.settings.sip_t1})")
        if self.settings.notify_port and self.settings.notify_port == self.settings.sip_port:
            raise ValueError(f"PNP_NOTIFY_PORT {self.settings.notify_port} is the listener's port: "
                             "the phones' 200 OK would land in the listener")
        self.timers = Timers(t1=self.settings.sip_t1, t2=self.settings.sip_t2)
        self.shard = self.settings.notifier_shard
        self._log_sent = BurstLog(self.reactor, lambda count: log.info(
            "sent {count} more NOTIFYs in a burst (not logged one by one; each phone's outcome is "
            "on its devices/{{mac}}/notify)", count=count))
        # One commit per reactor turn, however many messages that turn read: the sent log is on
        # disk before the next turn (a crash in between may repeat those NOTIFYs, never lose one).
        self.store = store if store is not None else Store(
            ctx.database_path(), later=lambda commit: self.reactor.callLater(0, commit))
        self.endpoints: dict[str, NotifyEndpoint] = {}
        self._ports: list[Any] = []
        self._stopped = False
        for address in netif.resolve(self.settings.sip_interface):
            self._open(address)
        if not self.endpoints:
            raise ValueError(f"PNP_SIP_INTERFACE {','.join(self.settings.sip_interface)}: "
                             "no IPv4 address to send NOTIFYs from")
        self._default = next(iter(self.endpoints.values()))
        topics = ctx.topics
        # Retained messages come back per subscription, in this order: what is published and
        # fetched is known before the discoveries are replayed and judged.
        ctx.bus.subscribe(topics.devices("published"), self._on_published)
        ctx.bus.subscribe(topics.devices("fetched"), self._on_fetched)
        ctx.bus.subscribe(topics.devices("discovered"), self._on_discovered)
        self.keeper = Keeper(ctx, topics.devices("notify"))
        self.keeper.start()
        for address, endpoint in self.endpoints.items():
            log.info("sending NOTIFYs from {host}:{port}", host=address, port=endpoint.local[1])
        if self.shard.count > 1:
            log.info("shard {shard}: NOTIFYs only for the MACs with crc32(mac) mod {n} = {i}",
                     shard=str(self.shard), n=self.shard.count, i=self.shard.index - 1)

    # --- life ---
    def _open(self, address: str) -> NotifyEndpoint:
        endpoint = NotifyEndpoint(self.clock, self.timers, self.counters_)
        port = self.reactor.listenUDP(self.settings.notify_port, endpoint, interface=address)
        self._ports.append(port)
        self.endpoints[address] = endpoint
        return endpoint

    def stop(self) -> Any:
        self._stopped = True
        self.keeper.stop()
        self._log_sent.flush()
        cut = sum(endpoint.stop() for endpoint in self.endpoints.values())
        if cut:
            log.info("stopped with {count} NOTIFY transactions unfinished", count=cut)
        ports, self._ports = self._ports, []
        self.store.close()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def counters(self) -> dict[str, int]:
        return {**self.store.summary(),
                "notify_in_flight": sum(len(e.table) for e in self.endpoints.values())}

    # --- inputs ---
    def _mac(self, msg: Incoming) -> str | None:
        info = self.ctx.topics.parse(msg.topic)
        if self._stopped or info is None or not info.mac_ok:
            return None
        if msg.error is not None:
            self._bad(msg, msg.error)
            return None
        return info.mac

    def _bad(self, msg: Incoming, why: str) -> None:
        self.counters_["bad_payloads"] += 1
        log.warn("ignored {topic}: {why}", topic=msg.topic, why=why)

    def _on_discovered(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        if msg.empty:
            self.store.drop_device(mac)
            return
        try:
            discovered = Discovered.from_json(msg.data)
        except PayloadError as exc:
            self._bad(msg, str(exc))
            return
        now = self.wall()
        device = self.store.put_device(mac, discovered, epoch(discovered.seen_at, now), msg.raw)
        plan = decide.after_discovery(mac, device, self.store.published.get(mac),
                                      self.store.provisions.get(mac), self.store.sent, now,
                                      self.settings.notify_window)
        if plan is not None:
            self._execute(plan)

    def _on_published(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        if msg.empty:
            self.store.drop_published(mac)
            return
        try:
            published = Published.from_json(msg.data)
        except PayloadError as exc:
            self._bad(msg, str(exc))
            return
        previous = self.store.put_published(mac, published, msg.raw)
        plan = decide.after_publish(mac, self.store.devices.get(mac), published, previous,
                                    self.store.provisions.get(mac), self.store.sent, self.wall(),
                                    self.settings.notify_window)
        if plan is not None:
            self._execute(plan)

    def _on_fetched(self, msg: Incoming) -> None:
        if _PROVISIONED.search(msg.raw) is None and not self._keeps_provision(msg.topic):
            # Not a running phone, and none before: its Provision would decide nothing.
            return
        mac = self._mac(msg)
        if mac is None or msg.empty:
            return
        try:
            fetched = Fetched.from_json(msg.data)
        except PayloadError as exc:
            self._bad(msg, str(exc))
            return
        old = self.store.provisions.get(mac)
        # Once a phone ran a config of ours it stays a working phone: a later first download
        # of a new revision (provisioned false until its reboot) does not undo that.
        provisioned = fetched.provisioned or (old is not None and old.provisioned)
        revision = fetched.revision if fetched.revision is not None else (old.revision if old else None)
        self.store.put_provision(mac, Provision(provisioned, revision, epoch(fetched.at, self.wall())))

    def _keeps_provision(self, topic: str) -> bool:
        """A phone known as provisioned: its later downloads still move its revision and time."""
        if not self.store.provisions:
            return False
        info = self.ctx.topics.parse(topic)
        old = self.store.provisions.get(info.mac) if info is not None else None
        return old is not None and old.provisioned

    # --- output ---
    def _endpoint_for(self, interface: str) -> NotifyEndpoint:
        endpoint = self.endpoints.get(interface)
        if endpoint is not None:
            return endpoint
        if interface and self.settings.sip_interface == ("all",):
            # An address that came up after we started; the listener already hears on it.
            try:
                if interface in netif.resolve(("all",)):
                    return self._open(interface)
            except Exception:
                log.failure("could not open a NOTIFY socket on {address}", address=interface)
        self.counters_["notify_interface_fallback"] += 1
        if interface:
            log.warn("the SUBSCRIBE arrived on {address}, which PNP_SIP_INTERFACE does not name: "
                     "sending from {default}", address=interface, default=self._default.local[0])
        return self._default

    def _execute(self, plan: decide.Plan) -> None:
        if not self.shard.owns(plan.mac):
            # Another instance's phone: it decides the same from the same retained state, and
            # its own sent log (not ours) keeps its restarts from sending twice.
            self.counters_["notify_other_shard"] += 1
            return
        device = self.store.devices[plan.mac]
        d = device.discovered
        endpoint = self._endpoint_for(d.interface)
        local = build.Local(*endpoint.local)
        published = self.store.published.get(plan.mac)
        vendor = d.vendor or (published.vendor if published else "")
        try:
            address = build.destination(d)
            if plan.kind == decide.UA_PROFILE:
                mode = self.settings.notify_dialog.mode_for(vendor)
                cseq = self.store.next_cseq(plan.mac) if mode == IN_DIALOG else 1
                request = build.ua_profile(d, plan.url, local, mode, cseq)
            else:
                request = build.check_sync(d, local, self.settings.resync_reboot)
        except build.BuildError as exc:
            self.counters_["notify_unbuildable"] += 1
            self.ctx.publish_error(plan.mac, "notify", f"cannot build the NOTIFY: {exc}")
            return
        if not self.store.mark_sent(plan.key, self.wall()):
            return
        call_id = request.call_id or ""

        def finished(result: Result) -> None:
            self._finished(plan, call_id, result)

        endpoint.send(request, address, finished)
        self.counters_["notify_sent"] += 1
        self._status(plan, NotifyStatus(
            status="sent", code=None, attempts=1, url=plan.url, revision=plan.revision,
            call_id=call_id, at=now_iso(), kind=plan.kind))
        self._log_sent(lambda: log.info("NOTIFY {kind} rev {revision} to {mac} at {host}:{port}",
                                        kind=plan.kind, revision=plan.revision, mac=plan.mac,
                                        host=address[0], port=address[1]))

    def _finished(self, plan: decide.Plan, call_id: str, result: Result) -> None:
        status = result.outcome.value
        self.counters_[f"notify_{status}"] += 1
        self._status(plan, NotifyStatus(
            status=status, code=result.status, attempts=result.attempts, url=plan.url,
            revision=plan.revision, call_id=call_id, at=now_iso(), reason=result.reason,
            rtt_ms=round(result.elapsed * 1000, 3) if result.outcome is not Outcome.TIMEOUT else None,
            kind=plan.kind))
        if result.outcome is not Outcome.ACCEPTED:
            log.warn("NOTIFY {kind} to {mac}: {status} {code} {reason} after {attempts} attempts",
                     kind=plan.kind, mac=plan.mac, status=status, code=result.status,
                     reason=result.reason, attempts=result.attempts)

    def _status(self, plan: decide.Plan, status: NotifyStatus) -> None:
        if not self._stopped:
            # NotifyStatus is flat: a shallow dict encodes the same bytes as to_json() without
            # dataclasses.asdict's deep copy, which was a tenth of a NOTIFY's CPU time.
            data = encode_json({**vars(status), "v": status.v})
            topic = self.ctx.topics.device(plan.mac, "notify")
            self.ctx.bus.publish(topic, data, retain=True)
            self.keeper.put(topic, data)
