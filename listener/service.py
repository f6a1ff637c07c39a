"""The running listener: its sockets, its core, and what it publishes."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from listener.discovery import SubscribeCore
from listener.multicast import GROUP, open_group_socket
from listener.protocol import SubscribeProtocol
from services import netif
from services.bus import Incoming
from services.messages import Discovered, encode_json
from services.runner import Context

log = Logger(namespace="listener")


def encode_discovered(d: Discovered) -> bytes:
    """``d.to_json()``, without dataclasses.asdict's deep copy: the same bytes, in a third of
    the time, which a boot storm of thousands of phones notices."""
    return encode_json({**vars(d), "v": d.v})


class ListenerService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.port = settings.sip_port
        try:
            self.interfaces = netif.resolve(settings.sip_interface)
        except ValueError as exc:
            raise RuntimeError(f"PNP_SIP_INTERFACE: {exc}") from None
        if not self.interfaces:
            raise RuntimeError("PNP_SIP_INTERFACE names no IPv4 interface to listen on")
        self.core = SubscribeCore(
            status=settings.subscribe_response, window=settings.discovery_window,
            rate=settings.sip_rate, burst=settings.sip_burst, contact_port=self.port,
        )
        self.protocols: list[SubscribeProtocol] = []
        self.ports: list[Any] = []
        self.publish_dropped = 0

    def start(self) -> "ListenerService":
        ctx = self.ctx
        # Rebuild which boots were published already from our own retained discoveries.
        ctx.bus.subscribe(ctx.topics.devices("discovered"), self._retained)
        for address in self.interfaces:
            sock = open_group_socket(address, self.port)
            try:
                protocol = SubscribeProtocol(self.core, address, ctx.reactor, self._publish)
                self.ports.append(ctx.reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol))
                self.protocols.append(protocol)
            finally:
                sock.close()  # the reactor holds its own duplicate of the descriptor
            log.info("joined {group} on {interface}, port {port}", group=GROUP, interface=address,
                     port=self.port)
        if all(a.startswith("127.") for a in self.interfaces):
            log.info("listening on loopback only: no phone on the LAN can reach this listener; "
                     "to serve a LAN set PNP_SIP_INTERFACE to its interface (e.g. eth0), "
                     "its address, or 'all'")
        return self

    def _publish(self, discovered: Discovered) -> None:
        topic = self.ctx.topics.device(discovered.mac, "discovered")
        if not self.ctx.bus.publish(topic, encode_discovered(discovered), retain=True):
            self.publish_dropped += 1
        log.info("discovered {mac} {vendor} {model} {firmware} at {ip}:{port} (boot {boot})",
                 mac=discovered.mac, vendor=discovered.vendor, model=discovered.model,
                 firmware=discovered.firmware, ip=discovered.ip, port=discovered.port,
                 boot=discovered.boot)

    def _retained(self, message: Incoming) -> None:
        if not message.retain or message.data is None:
            return  # our own live publications come back too; only the stored state teaches
        try:
            d = Discovered.from_json(message.data)
        except Exception:
            return
        self.core.remember(d.mac, d.call_id, d.boot, self.ctx.reactor.seconds())

    def counters(self) -> dict[str, int]:
        counters = dict(self.core.counters)
        counters["send_errors"] = sum(p.send_errors for p in self.protocols)
        counters["publish_dropped"] = self.publish_dropped
        return counters

    def stop(self) -> defer.Deferred:
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
