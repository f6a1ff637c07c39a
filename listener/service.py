"""The running listener: its sockets, its core, and what it publishes.

Each discovery it published is kept in memory by a :class:`Keeper` and put back if a broker
restarted from an older save lost it: its consumers (generator, notifier, fileserver) take the
same bytes again as a no-op, and a generator restarted later still learns the phone's vendor and
model from it (an assignment need not name them), and ``pnp devices`` its IP and firmware. A
restart of the listener forgets them: the phone's next boot publishes it again.

Discoveries expire (issue 13, item 6): anyone on the LAN can invent MACs, and each SUBSCRIBE would
otherwise leave a retained message for ever. A discovery of a MAC that no file was served to is
published with an MQTT v5 Message Expiry Interval of ``PNP_DISCOVERY_TTL`` seconds; the broker
drops it then. Which MACs were served files, the listener reads from the fileserver's retained
``fetched`` topics, not from ``assignment`` or ``config``: those carry SIP passwords, and the
listener, the service that parses hostile datagrams, is the last one that should hold them. When
a MAC's first ``fetched`` arrives, its discovery is published again, the same bytes, without
expiry. An assigned phone that never downloads keeps its discovery for the TTL; its next boot
publishes a new one."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import OrderedDict
from functools import partial
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from listener.discovery import Sighting, SubscribeCore
from listener.multicast import GROUP, open_group_socket
from listener.outbox import Outbox
from listener.protocol import AnswerTimes, AnsweringPort, SubscribeProtocol
from services.sip.message import MAX_DATAGRAM
from services import netif
from services.mqtt import Incoming
from services.burstlog import BurstLog
from services.messages import encode_flat
from services.retained import Keeper
from services.runner import Context
from services.settings import SIP_INTERFACE, SettingError
from services.topics import is_device_topic

log = Logger(namespace="listener")

LOG_PER_SECOND = 20
# Retained discoveries come in one burst after subscribing; this long without one ends it.
RETAINED_QUIET = 2.0
# Expiring discoveries kept to put back what a broker loses, at most: past it the oldest is
# forgotten here (and cleared on the broker at its next check); about 1 KB each.
MAX_EXPIRING_KEPT = 20_000


def waiting(port: Any) -> bool:
    """Whether a datagram waits on ``port``'s socket (FIONREAD: the next one's size)."""
    try:
        return bool(struct.unpack("i", fcntl.ioctl(port.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return False


class ListenerService:
    def __init__(self, ctx: Context, core: SubscribeCore) -> None:
        self.ctx = ctx
        self.core = core
        self.port = ctx.settings.sip_port
        self.interfaces: list[str] = []
        self.protocols: list[SubscribeProtocol] = []
        self.ports: list[Any] = []
        self.times = AnswerTimes()
        # Discoveries wait there until the datagrams at hand are answered: in a burst, every
        # phone's answer goes out before any MQTT work is done.
        self.keeper = Keeper(ctx, ctx.topics.devices("discovered"), republish=self._restore)
        self.outbox = Outbox(ctx.bus, ctx.reactor, window=ctx.settings.publish_window,
                             encode=self._encode, expiry=self._expiry, sent=self.keeper.put)
        self.ttl: int = ctx.settings.discovery_ttl
        self.served: set[str] = set()  # MACs the fileserver reported a download of
        self._payloads: dict[str, bytes] = {}  # topic -> the discovery we last published there
        self._expiring: OrderedDict[str, float] = OrderedDict()  # topic -> when the broker drops it
        self._sweep: Any = None
        self._learn_filter = ctx.topics.devices("discovered")
        self.learning = True
        self._learned = 0
        self._last_learned = 0.0
        self._learn_call: Any = None
        self._unlogged: list[Sighting] = []  # this turn's new phones, logged at its end
        self._log_call: Any = None
        # A line per phone, except in a boot storm: formatting a log line costs as much as
        # answering the phone, so past LOG_PER_SECOND a summary line counts the rest.
        self._log_discovered = BurstLog(ctx.reactor, lambda count: log.info(
            "discovered {count} more phones in a burst (not logged one by one; "
            "pnp devices lists them)", count=count), per_second=LOG_PER_SECOND)

    def _encode(self, topic: str, sighting: Sighting) -> bytes:
        # As the discovery leaves the outbox: its phone was answered turns ago (protocol.py)
        payload = encode_flat(sighting.discovered())
        self._payloads[topic] = payload
        self._expiring.pop(topic, None)
        if self.ttl and sighting.mac not in self.served:
            self._expiring[topic] = self.ctx.reactor.seconds() + self.ttl
            if len(self._expiring) > MAX_EXPIRING_KEPT:
                self._forget(next(iter(self._expiring)))
        # kept (keeper.put) once written: the outbox's ``sent``; its marker, which vouches for
        # it, goes out a second or more later, after it on the same connection (retained.py)
        return payload

    def _expiry(self, topic: str) -> int | None:
        expires = self._expiring.get(topic)
        if expires is None:
            return None
        return max(1, round(expires - self.ctx.reactor.seconds()))

    def _forget(self, topic: str) -> None:
        self._expiring.pop(topic, None)
        self._payloads.pop(topic, None)
        self.keeper.put(topic, b"")

    def _expire(self) -> None:
        now = self.ctx.reactor.seconds()
        expiring = self._expiring
        while expiring:
            topic, expires = next(iter(expiring.items()))
            if expires > now:
                break
            self._forget(topic)
            self.ctx.counters["discoveries_expired"] += 1

    def _restore(self, topics: list[str]) -> None:
        """Put back what the broker lost, with what is left of each one's expiry."""
        self._expire()
        for topic in topics:
            payload = self._payloads.get(topic)
            if payload is not None:
                self.ctx.bus.publish(topic, payload, retain=True, expiry=self._expiry(topic))

    def _fetched(self, message: Incoming) -> None:
        info = self.ctx.topics.parse(message.topic)
        if not is_device_topic(info):
            return
        if not message.raw:
            self.served.discard(info.mac)
            return
        if info.mac in self.served:
            return
        self.served.add(info.mac)
        topic = self.ctx.topics.device(info.mac, "discovered")
        if self._expiring.pop(topic, None) is not None:
            # the same bytes, for good: consumers take it as the message they already have
            self.ctx.bus.publish(topic, self._payloads[topic], retain=True)
            self.ctx.counters["discoveries_kept"] += 1

    def start(self) -> "ListenerService":
        ctx = self.ctx
        interface = ctx.settings.sip_interface
        try:
            self.interfaces = netif.resolve(interface)
        except ValueError as exc:
            raise SettingError(SIP_INTERFACE, ",".join(interface), str(exc)) from None
        if not self.interfaces:
            raise SettingError(SIP_INTERFACE, ",".join(interface), "names no IPv4 interface to listen on")
        self.keeper.start()
        # Rebuild which boots were published already from our own retained discoveries, then
        # stop listening: otherwise every discovery we publish comes back to be decoded.
        ctx.bus.subscribe(self._learn_filter, self._retained)
        ctx.bus.subscribe(ctx.topics.devices("fetched"), self._fetched)
        if self.ttl:
            self._sweep = task.LoopingCall(self._expire)
            self._sweep.clock = ctx.reactor
            self._sweep.start(max(1.0, min(self.ttl / 10, 3600.0)), now=False)
        ctx.bus.when_subscribed().addCallback(self._subscribed)
        for address in self.interfaces:
            try:
                sock = open_group_socket(address, self.port)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot join {GROUP}:{self.port} on {address}: {exc.strerror or exc} (does a "
                    f"program hold UDP port {self.port} without SO_REUSEPORT? see docs/LISTENER.md)"
                ) from None
            buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            try:
                protocol = SubscribeProtocol(self.core, address, ctx.reactor, self._file, self.times,
                                             on_read_done=self._read_done)
                self.ports.append(AnsweringPort.adopt(ctx.reactor, sock.fileno(), sock.family, protocol,
                                                      MAX_DATAGRAM))
                self.protocols.append(protocol)
            finally:
                sock.close()  # the reactor holds its own duplicate of the descriptor
            log.info("joined {group} on {interface}, port {port} (receive buffer {mib:.1f} MiB)",
                     group=GROUP, interface=address, port=self.port, mib=buffer / 2**20)
        if all(a.startswith("127.") for a in self.interfaces):
            log.info("listening on loopback only: no phone on the LAN can reach this listener; "
                     "to serve a LAN set PNP_SIP_INTERFACE to its interface (e.g. eth0), "
                     "its address, or 'all'")
        return self

    def _file(self, sighting: Sighting) -> None:
        # Filed only, from a protocol whose port reports the end of its read (_read_done):
        # made, sent and logged there (protocol.py says why), with no timed call to make and
        # cancel per phone
        self.outbox.put(self.ctx.topics.device(sighting.mac, "discovered"), sighting, soon=False)
        self._unlogged.append(sighting)

    def _publish(self, sighting: Sighting) -> None:
        # Filed, for a protocol that does not report the end of its read: the outbox makes and
        # sends the discovery on a later turn, and the log line waits for the end of this one
        self._file(sighting)
        self._later()

    def _later(self) -> None:
        self.outbox.kick()
        if self._log_call is None:
            self._log_call = self.ctx.reactor.callLater(0, self._log_turn)

    def _read_done(self) -> None:
        """A socket's waiting datagrams are all answered: the discoveries they filed are made
        and published now, in this reactor turn, then logged (protocol.py says why only now).
        With several interfaces, another socket's datagrams may be waiting: the discoveries then
        wait for the timed calls, as before this hook. That puts the other socket's answers
        first only when its read is in this same poll's batch; a datagram that came after the
        poll is answered after the discoveries (as it was before)."""
        if not self._unlogged:
            return
        if len(self.ports) > 1 and any(waiting(port) for port in self.ports):
            self._later()
            return
        self.outbox.now()
        if self._log_call is not None and self._log_call.active():
            self._log_call.cancel()
        self._log_turn()

    def _log_turn(self) -> None:
        # Not where the discovery leaves the outbox: while the broker is away that can be
        # minutes later, and the log would not show the phones that are booting.
        self._log_call = None
        unlogged, self._unlogged = self._unlogged, []
        for sighting in unlogged:
            self._log_discovered(partial(self._log_discovery, sighting))

    def _log_discovery(self, sighting: Sighting) -> None:
        d = sighting.discovered()  # only for the lines logged, at most LOG_PER_SECOND
        log.info("discovered {mac} {vendor} {model} {firmware} at {ip}:{port} (boot {boot})",
                 mac=d.mac, vendor=d.vendor, model=d.model, firmware=d.firmware, ip=d.ip,
                 port=d.port, boot=d.boot)

    def _subscribed(self, _: Any) -> None:
        # the retained burst follows the SUBACK: count the quiet time from here
        self._last_learned = self.ctx.reactor.seconds()
        if self.learning and self._learn_call is None:
            self._learn_call = self.ctx.reactor.callLater(RETAINED_QUIET, self._check_learned)

    def _check_learned(self) -> None:
        self._learn_call = None
        if not self.learning:
            return
        if self.ctx.reactor.seconds() - self._last_learned < RETAINED_QUIET:
            self._learn_call = self.ctx.reactor.callLater(RETAINED_QUIET, self._check_learned)
            return
        self._done_learning()

    def _done_learning(self) -> None:
        self.learning = False
        if self._learn_call is not None and self._learn_call.active():
            self._learn_call.cancel()
        self._learn_call = None
        # only our handler: the keeper may be reading the same topics back (services/retained.py)
        self.ctx.bus.remove_handler(self._learn_filter, self._retained)
        log.info("learned {count} published boots from the retained discoveries", count=self._learned)

    def _retained(self, message: Incoming) -> None:
        # Read the two fields by hand: the whole retained set arrives at once, and full
        # payload validation of ten thousand phones would stall the answers.
        if not self.learning:
            return
        if not message.retain:
            # a live message (our own echo): the broker has sent everything it stored
            self._done_learning()
            return
        self._last_learned = self.ctx.reactor.seconds()
        data = message.data
        if not isinstance(data, dict):
            return
        info = self.ctx.topics.parse(message.topic)
        call_id, boot = data.get("call_id"), data.get("boot")
        if not is_device_topic(info) or not isinstance(call_id, str):
            return
        if not isinstance(boot, int) or isinstance(boot, bool):
            boot = 1
        self.core.remember(info.mac, call_id, boot, self.ctx.reactor.seconds())
        self._learned += 1

    def counters(self) -> dict[str, int]:
        counters = dict(self.core.counters)
        counters["send_errors"] = sum(p.send_errors for p in self.protocols)
        counters["cache_evicted"] = self.core.cache_evicted()
        counters["cache_bytes"] = self.core.cache_bytes()
        counters["publish_dropped"] = self.outbox.dropped
        counters["publish_pending"] = len(self.outbox)
        counters.update(self.times.percentiles_us())
        return counters

    def stop(self) -> defer.Deferred:
        self.learning = False
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        if self._learn_call is not None and self._learn_call.active():
            self._learn_call.cancel()
        self.outbox.flush_all()
        self.keeper.stop()
        if self._log_call is not None and self._log_call.active():
            self._log_call.cancel()
            self._log_turn()
        self._log_discovered.flush()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
