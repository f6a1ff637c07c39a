"""The phones' bodies: sockets, addresses, HTTP and time, around the sans-I/O :class:`Phone`.

Each phone gets its own loopback address (127.0.0.2, 127.0.0.3, ...) and its vendor's port, one
UDP socket bound there (multicast out through 127.0.0.1 with TTL 0, so nothing leaves the host),
and HTTP connections made from that address, so every service sees what it would see on a LAN.
Boots are spread over ``boot_over`` seconds (all at once when 0, in reactor-sized batches), and
the whole run is bounded by ``timeout``: a phone still busy then fails where it stands.
"""

from __future__ import annotations

import errno
import gc
import heapq
import itertools
import ipaddress
import random
import resource
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.python import log as twisted_log
from twisted.internet.ssl import Certificate

from tools.simulate import http
from tools.simulate.phone import Fetch, Phone, Send, State, Timing
from tools.simulate.report import Report
from tools.simulate.vendors import GROUP, Identity, VENDORS, find_model

BOOT_BATCH = 200  # phones booted per reactor turn, so replies are read between batches
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class PlanError(ValueError):
    pass


def plan(count: int, models: Sequence[str] = ("GRP2614",), address_start: str = "127.0.0.2",
         mac_start: int = 1, phone_port: int | None = None) -> list[Identity]:
    """The phones of a run: models taken in turn from ``models``, addresses counted up from
    ``address_start`` (skipping .0 and .255, staying inside 127/8), MACs from each vendor's OUI
    with the phone's number ``mac_start + i`` in the low 24 bits."""
    if count < 1:
        raise PlanError("count must be at least 1")
    picks = [find_model(m) for m in models] or [find_model("GRP2614")]
    try:
        addr = int(ipaddress.IPv4Address(address_start))
    except ValueError:
        raise PlanError(f"not an IPv4 address: {address_start!r}") from None
    if mac_start < 0 or mac_start + count > 1 << 24:
        raise PlanError("mac_start + count must stay below 16777216")
    out = []
    for i in range(count):
        while addr & 0xFF in (0, 255):
            addr += 1
        ip = ipaddress.IPv4Address(addr)
        if ip not in LOOPBACK or ip == ipaddress.IPv4Address("127.0.0.1"):
            raise PlanError(f"phone address {ip} is outside 127.0.0.2-127.255.255.254")
        vendor, model = picks[i % len(picks)]
        mac = f"{vendor.oui}{mac_start + i:06x}"
        out.append(Identity(vendor, model, vendor.models[model], mac, str(ip), phone_port or vendor.sip_port))
        addr += 1
    return out


def settle_gc() -> None:
    """For a process that runs one big fleet (``pnp simulate``): what exists before the boots
    (the phones, their identities, the code) lives until the end, so it is frozen out of the
    collector's reach, and young objects are collected less often. The collector's passes over
    ten thousand phones' state cost a sixth of the simulator's CPU in a storm, CPU it shares
    with the PBX it measures. Not for tests: freezing is for the life of the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def raise_file_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit); returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted or soft == resource.RLIM_INFINITY:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_READ_IGNORE = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                errno.ENETUNREACH, errno.ECONNRESET}
_STAMP = struct.Struct("qq")


class _PhoneSocket:
    """A phone's UDP socket, read by the reactor directly (no twisted.internet.udp.Port: its
    start and stop each log a line, and its write checks every address, per phone, in a storm
    whose simulator shares the CPU with the PBX it measures). Each datagram is handed over with
    its kernel receive time (SO_TIMESTAMPNS) when ``stamped``."""

    __slots__ = ("fleet", "phone", "sock", "fd", "stamped")

    def __init__(self, fleet: "Fleet", phone: Phone, sock: socket.socket, stamped: bool) -> None:
        self.fleet = fleet
        self.phone = phone
        self.sock = sock
        self.fd = sock.fileno()
        self.stamped = stamped

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "pnp-simulate-phone"

    def doRead(self) -> None:
        # One datagram per wake-up: a phone rarely has two waiting, and the reactor comes back
        # for the next one (level-triggered), so no read per wake-up is spent on "nothing more".
        fleet, sock = self.fleet, self.sock
        at = None
        try:
            if self.stamped:
                data, ancillary, _flags, addr = sock.recvmsg(65535, 64)
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = _STAMP.unpack_from(value)
                        at = sec + nsec / 1e9
            else:
                data, addr = sock.recvfrom(65535)
        except OSError as exc:
            if exc.errno in _READ_IGNORE:
                return None
            raise
        fleet.counters["datagrams_in"] += 1
        now = fleet.now()
        # The kernel's arrival time, when we have it: a busy simulator must not make the PBX
        # look slow. It is never later than now (the clocks are the same: wall time).
        when = at if at is not None and at <= now else now
        try:
            fleet._act(self.phone, self.phone.receive(data, (addr[0], addr[1]), when))
        except Exception:
            twisted_log.err()  # one phone's bug is logged, the others go on
        return None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)

    def connectionLost(self, reason: Any = None) -> None:
        """The reactor dropped us (a read raised): the phone hears nothing more."""
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.fleet.reactor.removeReader(self)  # before the close: found by its number
            self.sock.close()
            self.fd = -1


@dataclass
class Progress:
    total: int
    booted: int = 0
    answered: int = 0
    notified: int = 0
    provisioned: int = 0
    failed: int = 0
    elapsed: float = 0.0

    def line(self) -> str:
        return (f"[{self.elapsed:6.1f}s] booted {self.booted}/{self.total}  answered {self.answered}  "
                f"notified {self.notified}  provisioned {self.provisioned}  failed {self.failed}")


@dataclass
class Fleet:
    """Run ``identities`` against a PBX whose multicast group listens on ``sip_port``.

    ``yield Fleet(...).run()`` gives a :class:`Report`; the Deferred never fails because of a
    phone (phones fail in the report), only for a programming error.
    """

    identities: list[Identity]
    sip_port: int
    timing: Timing = field(default_factory=Timing)
    boot_over: float = 0.0
    timeout: float = 120.0
    fetch_timeout: float = 10.0
    group: str = GROUP
    seed: int | None = None
    trust: Certificate | None = None
    reactor: Any = None
    on_progress: Callable[[Progress], None] | None = None
    progress_interval: float = 0.5
    credentials: tuple[str, str] | None = None  # answer HTTP 401 challenges (Basic, Digest)
    linger: float = 0.0  # keep the phones up this long after the last one is done (resyncs)
    stamped: bool = True  # kernel receive times (needs the real reactor's clock: wall time)
    check_files: bool = True  # phones read each file as their vendor's firmware does

    def __post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        target = ipaddress.IPv4Address(self.group)
        if not (target.is_multicast or target in LOOPBACK):
            # NETWORK-SAFETY.md: multicast (pinned to loopback, TTL 0) or this host, nothing else.
            raise PlanError(f"SUBSCRIBE target {self.group} is neither multicast nor in 127.0.0.0/8")
        rng = random.Random(self.seed)
        self.phones = [Phone(i, self.sip_port, self.timing, random.Random(rng.random()), self.group,
                             self.credentials, check_files=self.check_files) for i in self.identities]
        self.counters = {"datagrams_in": 0, "datagrams_out": 0, "send_errors": 0, "http_requests": 0}
        self._ports: dict[int, Any] = {}
        # The phones' deadlines: (deadline, order, phone), and each phone's current one.
        self._heap: list[tuple[float, int, Phone]] = []
        self._due: dict[int, float] = {}
        self._order = itertools.count()
        self._wake_call: Any = None
        self._wake_at: float | None = None
        self._done: defer.Deferred = defer.Deferred()
        self._done_phones: set[int] = set()
        self._started = False
        self._origin = 0.0
        self._boot_queue: list[tuple[float, int]] = []
        self._boot_call: Any = None
        self._end_call: Any = None
        self._progress_call: Any = None
        self._finished = False
        self._linger_call: Any = None
        self._http = http.Client(self.reactor, self.fetch_timeout, self.trust)

    def now(self) -> float:
        return self.reactor.seconds()

    # --- the run ---
    def run(self) -> defer.Deferred:
        raise_file_limit(len(self.phones) * 2 + 256)
        self._origin = self.now()
        for phone in self.phones:
            self._bind(phone)
        n = len(self.phones)
        spread = self.boot_over / n if self.boot_over > 0 else 0.0
        self._boot_queue = [(self._origin + i * spread, i) for i in range(n) if not self.phones[i].done]
        self._boot_queue.reverse()  # pop() from the end takes the earliest
        self._started = True
        self._boot_more()
        self._end_call = self.reactor.callLater(self.boot_over + self.timeout, self._time_up)
        if self.on_progress is not None:
            self._progress_call = self.reactor.callLater(self.progress_interval, self._report_progress)
        self._check_done()
        return self._done

    def stop(self) -> None:
        """End the run now (a lingering fleet once the test saw what it waited for): phones not
        done fail with "when the run ended", and the report is delivered as usual."""
        self._finish()

    def progress(self) -> Progress:
        p = Progress(len(self.phones), elapsed=self.now() - self._origin)
        for phone in self.phones:
            t = phone.times
            p.booted += t.boot is not None
            p.answered += t.answer is not None
            p.notified += t.notify is not None
            p.provisioned += phone.state == State.PROVISIONED
            p.failed += phone.state == State.FAILED
        return p

    def _bind(self, phone: Phone) -> None:
        ident = phone.ident
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((ident.ip, ident.port))
            # Network safety: multicast leaves through loopback only and never crosses a router.
            # Set before the socket is watched, so nothing is ever sent from an unpinned socket.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            stamped = self.stamped and hasattr(sock, "recvmsg")
            if stamped:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError as exc:
            sock.close()
            phone.fail(self.now(), "bind", f"cannot bind {ident.ip}:{ident.port}: {exc}")
            self._phone_done(phone)
            return
        port = _PhoneSocket(self, phone, sock, stamped)
        self.reactor.addReader(port)
        self._ports[id(phone)] = port

    def _boot_more(self) -> None:
        self._boot_call = None
        now = self.now()
        booted = 0
        while self._boot_queue and booted < BOOT_BATCH:
            at, index = self._boot_queue[-1]
            if at > now:
                break
            self._boot_queue.pop()
            phone = self.phones[index]
            self._act(phone, phone.boot(self.now()))
            booted += 1
        if self._boot_queue and not self._finished:
            delay = max(0.0, self._boot_queue[-1][0] - self.now())
            self._boot_call = self.reactor.callLater(delay, self._boot_more)

    def _act(self, phone: Phone, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(phone, action)
            elif isinstance(action, Fetch):
                self._fetch(phone, action)
        self._schedule(phone)
        if phone.done:
            self._phone_done(phone)

    def _send(self, phone: Phone, action: Send) -> None:
        port = self._ports.get(id(phone))
        if port is None:
            return
        try:
            port.write(action.data, action.addr)
            self.counters["datagrams_out"] += 1
        except OSError:
            # A full socket buffer drops the datagram, as a LAN would; the phone retransmits.
            self.counters["send_errors"] += 1

    def _schedule(self, phone: Phone) -> None:
        """Keep ``phone.deadline`` in the fleet's one timer heap. One reactor timer wakes the
        fleet at the earliest deadline, rather than a timer per phone per wait armed and
        cancelled (ten thousand phones, a handful of waits each). A deadline that changed
        leaves its old entry behind, skipped when it comes up."""
        wanted = phone.deadline
        key = id(phone)
        if wanted is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == wanted or self._finished:
            return
        self._due[key] = wanted
        heapq.heappush(self._heap, (wanted, next(self._order), phone))
        if self._wake_at is None or wanted < self._wake_at:
            if self._wake_call is not None and self._wake_call.active():
                self._wake_call.cancel()
            self._wake_at = wanted
            self._wake_call = self.reactor.callLater(max(0.0, wanted - self.now()), self._wake)

    def _wake(self) -> None:
        self._wake_call = self._wake_at = None
        now = self.now()
        heap = self._heap
        while heap and heap[0][0] <= now and not self._finished:
            deadline, _, phone = heapq.heappop(heap)
            key = id(phone)
            if self._due.get(key) != deadline or phone.deadline != deadline:
                continue  # superseded
            del self._due[key]
            self._act(phone, phone.tick(now))
        if heap and not self._finished and self._wake_call is None:
            self._wake_at = heap[0][0]
            self._wake_call = self.reactor.callLater(max(0.0, self._wake_at - now), self._wake)

    # --- HTTP ---
    def _fetch(self, phone: Phone, action: Fetch) -> None:
        self.counters["http_requests"] += 1

        def done(response: http.HttpResponse | None, error: str | None) -> None:
            if response is None:
                self._act(phone, phone.http_error(error or "failed", self.now()))
            else:
                self._act(phone, phone.http_response(response.status, response.headers, response.body,
                                                     self.now()))

        self._http.get(action.url, action.headers, phone.ident.ip, done)

    # --- the end ---
    def _phone_done(self, phone: Phone) -> None:
        key = id(phone)
        if key in self._done_phones:
            return
        self._done_phones.add(key)
        self._check_done()

    def _check_done(self) -> None:
        if self._finished or not self._started or len(self._done_phones) < len(self.phones):
            return
        if self.linger > 0:
            if self._linger_call is None:
                self._linger_call = self.reactor.callLater(self.linger, self._finish)
            return
        self._finish()

    def _time_up(self) -> None:
        self._end_call = None
        now = self.now()
        for phone in self.phones:
            phone.give_up(now)
        self._finish()

    def _report_progress(self) -> None:
        self._progress_call = None
        if self._finished or self.on_progress is None:
            return
        self.on_progress(self.progress())
        self._progress_call = self.reactor.callLater(self.progress_interval, self._report_progress)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        end = self.now()
        for phone in self.phones:  # a resync still in flight when the linger ends
            phone.give_up(end)
        for call in [self._boot_call, self._end_call, self._progress_call, self._linger_call,
                     self._wake_call]:
            if call is not None and call.active():
                call.cancel()
        self._heap.clear()
        self._due.clear()
        self._http.close()
        if self.on_progress is not None:
            self.on_progress(self.progress())
        for port in self._ports.values():
            port.close()
        self._ports.clear()
        report = Report.of(self.phones, self._origin, end)
        # Delivered from the reactor, not from inside the phone's call that ended the run.
        self.reactor.callLater(0, self._done.callback, report)


__all__ = ["Fleet", "Progress", "PlanError", "plan", "raise_file_limit", "settle_gc", "VENDORS"]
