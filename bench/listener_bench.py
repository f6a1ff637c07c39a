"""Listener benchmark (not a test): SUBSCRIBEs answered per second, and answer latency.

    .venv/bin/python bench/listener_bench.py [--requests 20000] [--rate 1000] [--seconds 5]
    .venv/bin/python bench/listener_bench.py --cpu-only --requests 40000 --repeats 7

Three measurements, all on loopback (NETWORK-SAFETY.md: the phones multicast with
IP_MULTICAST_IF=127.0.0.1 and TTL 0; the listener joins on 127.0.0.1 only):

1. in this process, CPU microseconds per SUBSCRIBE (time.process_time, best of ``--repeats``):
   the core's answer, answer and discovery, a retransmission, and the listener's whole
   datagram path but MQTT (``cpu_per_subscribe``); then the sans-I/O core alone, new phones
   (parse, answer, discovery encoded) and retransmissions per second;
2. ``pnp listener`` as its own process pinned to one CPU, with a private mosquitto, driven by
   simulated phones on their own addresses 127.1.x.y (pinned to another CPU): closed-loop
   throughput with a window of outstanding SUBSCRIBEs, every one a new phone booting (so each
   is answered AND published as a discovery);
3. the same, open loop at ``--rate`` SUBSCRIBEs per second: p50/p99/max of the time from the
   phone's send to the kernel's receive timestamp of the answer (SO_TIMESTAMPNS, so this
   generator's own wake-up delay is not counted). It includes the UDP path both ways and any
   time the SUBSCRIBE waits in the listener's socket, so it bounds the listener's
   packet-in-to-answer-out time from above; the listener's own view of it (datagram read ->
   answer written) comes from its status counters.

4. ``--hops``: the listener in this process (the real reactor, bus and a private mosquitto), phones
   in a child process at ``--rate``; per new phone, perf_counter stamps of the answer's
   ``sendto``, the outbox's turn, the discovery made, handed to paho, and the ``send`` that put
   its PUBLISH on the socket (the k-th discovery is the k-th answer: every phone is new), and
   the process's CPU per phone. The stamps are the bench's wrappers, not the service's code.

Everything it starts it stops; the run is bounded by the request counts and timeouts.
"""

from __future__ import annotations

import contextlib

import argparse
import json
import os
import selectors
import struct
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from listener.discovery import SubscribeCore  # noqa: E402
from listener.multicast import GROUP  # noqa: E402
from services.messages import encode_flat  # noqa: E402
from services.broker import Mosquitto, free_port  # noqa: E402

TEMPLATE = (
    "SUBSCRIBE sip:MAC%3A{mac}@224.0.1.75 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{n};rport\r\n"
    "From: <sip:MAC%3A{mac}@224.0.1.75>;tag={n}\r\n"
    "To: <sip:MAC%3A{mac}@224.0.1.75>\r\n"
    "Call-ID: {n}-{port}-1@bench\r\n"
    "CSeq: 20000 SUBSCRIBE\r\n"
    "Contact: <sip:{ip}:{port}>\r\n"
    "X-Grandstream-PBX: true\r\n"
    "Max-Forwards: 70\r\n"
    "User-Agent: Grandstream GRP2614 1.0.0.31\r\n"
    "Expires: 0\r\n"
    "Supported: replaces, path\r\n"
    'Event: ua-profile;profile-type="device";vendor="Grandstream";model="GRP2614";version="1.0.0.31"\r\n'
    "Accept: application/url\r\n"
    "Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, SUBSCRIBE, NOTIFY, INFO, REFER, UPDATE, MESSAGE\r\n"
    "Content-Length: 0\r\n\r\n"
)


# Linux: the kernel stamps each received datagram (CLOCK_REALTIME), so the answer's arrival
# time does not include this process's own wake-up delay. Missing from the socket module.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def subscribe(n: int, ip: str, port: int) -> bytes:
    return TEMPLATE.format(mac=f"000B82{n:06X}", ip=ip, port=port, n=n).encode()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# --- 1. the core ---------------------------------------------------------------------------


def bench_core(count: int) -> tuple[float, float]:
    packets = [subscribe(i, "10.0.0.1", 5080) for i in range(count)]
    best_new = best_retx = 0.0
    for _ in range(3):
        core = SubscribeCore(rate=1e9, burst=1e9)
        start = time.perf_counter()
        for p in packets:
            out = core.handle(p, ("10.0.0.1", 5080), "127.0.0.1", start)
            encode_flat(out.discovered)
        best_new = max(best_new, count / (time.perf_counter() - start))
        start = time.perf_counter()
        for p in packets:
            core.handle(p, ("10.0.0.1", 5080), "127.0.0.1", start)
        best_retx = max(best_retx, count / (time.perf_counter() - start))
    return best_new, best_retx


def cpu_per_subscribe(count: int, repeats: int) -> dict[str, float]:
    """CPU microseconds per SUBSCRIBE (time.process_time, best of ``repeats``), in this process:
    what a shared, busy machine cannot hide the way it hides wall-clock latency.

    - ``answer``: the core's answer alone (parse, decide, build the 200 OK, dedup bookkeeping);
    - ``answer+discovery``: that plus the discovery built and encoded, all a new phone costs the
      core;
    - ``retransmission``: a SUBSCRIBE already answered (the cached bytes again);
    - ``service``: the listener's whole datagram path but MQTT itself: the protocol (answer
      written to a fake transport, the answer-time sample), then the outbox's turns (discovery
      built, encoded, logged, kept by the Keeper, handed to a bus that only counts).
    """
    from twisted.internet import task

    from listener.protocol import SubscribeProtocol
    from listener.service import ListenerService

    packets = [subscribe(i, "10.0.0.1", 5080) for i in range(count)]
    source = ("10.0.0.1", 5080)
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        us = seconds / count * 1e6
        best[name] = min(best.get(name, us), us)

    for _ in range(repeats):
        core = SubscribeCore(rate=1e9, burst=1e9)
        start = time.process_time()
        for p in packets:
            core.handle(p, source, "127.0.0.1", 1.0)
        keep("answer", time.process_time() - start)

        core = SubscribeCore(rate=1e9, burst=1e9)
        start = time.process_time()
        for p in packets:
            encode_flat(core.handle(p, source, "127.0.0.1", 1.0).discovered)
        keep("answer+discovery", time.process_time() - start)

        start = time.process_time()
        for p in packets:
            core.handle(p, source, "127.0.0.1", 2.0)
        keep("retransmission", time.process_time() - start)

        clock = task.Clock()
        service = ListenerService(_fake_context(clock), SubscribeCore(rate=1e9, burst=1e9))
        protocol = SubscribeProtocol(service.core, "127.0.0.1", clock, service._publish, service.times)
        protocol.transport = _NullTransport()  # type: ignore[assignment]
        start = time.process_time()
        for i, p in enumerate(packets):
            protocol.datagramReceived(p, source)
            if i % 8 == 7:  # a reactor turn: eight datagrams read, then the timed calls
                clock.advance(0)
        while len(service.outbox):
            clock.advance(0)
        keep("service", time.process_time() - start)
        assert service.ctx.bus.published == count, service.ctx.bus.published
    return best


class _NullTransport:
    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


class _CountingBus:
    """What the listener's outbox and keeper ask of the bus, with nothing sent."""

    connected = True
    queued = 0

    def __init__(self) -> None:
        self.published = 0

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1,
                expiry: int | None = None) -> bool:
        self.published += 1
        return True

    def on_connect(self, callback: object) -> None:
        pass

    def on_acknowledged(self, callback: object) -> None:
        pass

    def batch(self):  # the real bus writes a batch's publishes at its end
        return contextlib.nullcontext()


def _fake_context(clock: object) -> object:
    from collections import Counter
    from types import SimpleNamespace

    from services.topics import Topics

    settings = SimpleNamespace(sip_port=5060, publish_window=16, discovery_ttl=604800,
                               instance="bench")
    return SimpleNamespace(name="listener", settings=settings, bus=_CountingBus(),
                           topics=Topics("pnp"), reactor=clock, counters=Counter())


# --- 2./3. the service ---------------------------------------------------------------------


class Phones:
    """Many phones, each a socket on its own loopback address, driven by one epoll loop."""

    def __init__(self, count: int, sip_port: int) -> None:
        self.sip_port = sip_port
        self.socks: list[socket.socket] = []
        self.sel = selectors.DefaultSelector()
        for i in range(count):
            ip = f"127.1.{i // 250}.{i % 250 + 1}"
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.socks.append(s)
        self.sent: dict[bytes, float] = {}
        self.rtts: list[float] = []
        self.n = 0

    def send_one(self, base: int) -> None:
        s = self.socks[self.n % len(self.socks)]
        ip, port = s.getsockname()
        n = base + self.n
        self.n += 1
        data = subscribe(n, ip, port)
        self.sent[f"{n}-{port}-1@bench".encode()] = time.time_ns()
        s.sendto(data, (GROUP, self.sip_port))

    def poll(self, timeout: float) -> int:
        got = 0
        for key, _ in self.sel.select(timeout):
            s = key.fileobj
            while True:
                try:
                    data, ancillary, _, _ = s.recvmsg(65535, 64)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                now = time.time_ns()
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", value[:16])
                        now = sec * 1_000_000_000 + nsec
                i = data.find(b"Call-ID: ")
                call_id = data[i + 9:data.find(b"\r\n", i)]
                sent = self.sent.pop(call_id, None)
                if sent is not None:
                    self.rtts.append((now - sent) / 1e9)
                    got += 1
        return got

    def close(self) -> None:
        for s in self.socks:
            self.sel.unregister(s)
            s.close()


def closed_loop(phones: Phones, total: int, window: int, base: int) -> tuple[float, int]:
    """Keep ``window`` SUBSCRIBEs outstanding; returns (answered per second, lost)."""
    phones.sent.clear()
    phones.n = 0
    answered = 0
    start = time.perf_counter()
    last_progress = start
    while answered < total:
        while phones.n < total and len(phones.sent) < window:
            phones.send_one(base)
        got = phones.poll(0.05)
        answered += got
        now = time.perf_counter()
        if got:
            last_progress = now
        elif now - last_progress > 1.0:  # whatever is still outstanding was lost
            if phones.n >= total:
                break
            phones.sent.clear()
            last_progress = now
    elapsed = time.perf_counter() - start
    return answered / elapsed, total - answered


def open_loop(phones: Phones, rate: float, seconds: float, base: int) -> tuple[list[float], int]:
    phones.sent.clear()
    phones.rtts.clear()
    phones.n = 0
    total = int(rate * seconds)
    start = time.perf_counter()
    while phones.n < total:
        due = start + phones.n / rate
        now = time.perf_counter()
        if now >= due:
            phones.send_one(base)
            continue
        phones.poll(max(0.0, due - now))
    deadline = time.perf_counter() + 2.0
    while phones.sent and time.perf_counter() < deadline:
        phones.poll(0.05)
    return list(phones.rtts), len(phones.sent)


def wait_answering(phones: Phones, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phones.sent.clear()
        phones.n = 0
        phones.send_one(16_000_000)
        if phones.poll(0.3):
            return
    raise SystemExit("the listener did not answer")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_counters(broker_url: str, instance: str) -> dict:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    """The listener's latest status counters, once its outbox has drained (or after 10 s)."""
    got: dict = {}
    host, port = broker_url.rsplit("//", 1)[1].rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, *_: cl.subscribe(f"pnp/services/listener/{instance}", 1)
    c.on_message = lambda cl, u, m: got.update(json.loads(m.payload).get("counters", {}))
    c.connect(host, int(port))
    c.loop_start()
    deadline = time.monotonic() + 10
    while (not got or got.get("publish_pending")) and time.monotonic() < deadline:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    return got



# --- 4. the hop from the answer to the discovery's PUBLISH, in process -----------------------


def send_phones(sip_port: int, rate: float, seconds: float, base: int) -> None:
    """The child process of ``--hops``: phones at ``rate``, answers collected (not timed)."""
    phones = Phones(1000, sip_port)
    wait_answering(phones)
    open_loop(phones, rate, seconds, base)
    phones.close()


def hop_trace(rate: float, seconds: float, repeats: int) -> None:
    """Where an answered new phone's discovery spends its time before its PUBLISH is written."""
    from twisted.internet import reactor

    from listener import main as listener_main
    from services import settings as s
    from services.runner import Runtime

    tmp = Path(tempfile.mkdtemp(prefix="pnp-listener-hops-"))
    broker = Mosquitto(tmp / "broker", persistence=False)
    broker.start()
    sip_port = free_port()
    settings = s.resolve(s.COMMON + s.CONTRACT + listener_main.SETTINGS,
                         {"mqtt_url": broker.url, "data_dir": str(tmp / "var"), "instance": "hops",
                          "status_interval": "30", "sip_port": str(sip_port),
                          "sip_interface": "127.0.0.1", "sip_rate": "1000000",
                          "sip_burst": "1000000"}, environ={})
    from services.log import start_logging

    # as ``pnp listener`` runs (services/runner.py): its log lines written, its collector tuned
    log_file = open(tmp / "listener.log", "w")
    start_logging("listener", "json", stream=log_file)
    import gc
    gc.set_threshold(10_000, 20, 20)
    runtime = Runtime("listener", settings, listener_main.start, reactor)
    stamps: dict[str, list[float]] = {"answer": [], "turn": [], "made": [], "handed": [], "sent": []}
    clock = time.perf_counter

    def instrument() -> None:
        service = runtime.component
        for protocol in service.protocols:  # type: ignore[union-attr]
            send = protocol._send

            def answered(data: bytes, dest: tuple[str, int], send=send) -> None:
                send(data, dest)
                stamps["answer"].append(clock())
            protocol._send = answered
        outbox = service.outbox  # type: ignore[union-attr]
        drain, encode, publish = outbox.drain, outbox.encode, outbox.bus.publish

        def drained() -> None:
            stamps["turn"].append(clock())  # one per turn: spread over its discoveries below
            drain()
        outbox.drain = drained

        def encoded(topic: str, item: object) -> bytes:
            data = encode(topic, item)
            stamps["made"].append(clock())
            return data
        outbox.encode = encoded

        def handed(topic: str, payload: object, *args: object, **kwargs: object) -> bool:
            done = publish(topic, payload, *args, **kwargs)
            if topic.endswith("/discovered") and payload:
                stamps["handed"].append(clock())
            return done
        outbox.bus.publish = handed
        client = runtime.bus._client
        sock_send = client._sock_send

        def sent(buf: bytes) -> int:
            written = sock_send(buf)
            now = clock()
            stamps["sent"].extend([now] * bytes(buf[:written]).count(b"/discovered"))
            return written
        client._sock_send = sent

    results: list[str] = []

    def run_all() -> defer.Deferred:  # type: ignore[name-defined]
        return defer.ensureDeferred(go())

    async def go() -> None:
        await runtime.start()
        await runtime.bus.when_subscribed()
        await task.deferLater(reactor, 2.5, lambda: None)  # the retained read-back ends
        instrument()
        for run in range(repeats):
            for values in stamps.values():
                values.clear()
            cpu = time.process_time()
            child = subprocess.Popen([sys.executable, __file__, "--send-phones", str(sip_port),
                                      "--rate", str(rate), "--seconds", str(seconds),
                                      "--base", str((run + 1) * 1_000_000)])
            while child.poll() is None:
                await task.deferLater(reactor, 0.1, lambda: None)
            await task.deferLater(reactor, 0.3, lambda: None)
            cpu = time.process_time() - cpu
            results.append(report(stamps, cpu, run))
        reactor.stop()

    def report(st: dict[str, list[float]], cpu: float, run: int) -> str:
        n = min(len(st["answer"]), len(st["sent"]), len(st["made"]), len(st["handed"]))
        answers = st["answer"][-n:]  # wait_answering's probes come first
        made, handed, sent = st["made"][-n:], st["handed"][-n:], st["sent"][-n:]
        us = lambda a, b: [(y - x) * 1e6 for x, y in zip(a, b)]  # noqa: E731
        parts = []
        for name, values in (("answer->made", us(answers, made)), ("made->handed", us(made, handed)),
                             ("handed->sent", us(handed, sent)),
                             ("answer->sent", us(answers, sent))):
            parts.append(f"{name} p50 {percentile(values, 50):.0f} p99 "
                         f"{percentile(values, 99):.0f}")
        return (f"run {run + 1}: {n} phones, listener CPU {cpu / max(n, 1) * 1e6:.0f} us/phone, "
                f"{len(st['turn'])} outbox turns; us: " + ", ".join(parts))

    from twisted.internet import defer, task
    reactor.callWhenRunning(lambda: run_all().addErrback(lambda f: (print(f), reactor.stop())))
    try:
        reactor.run()
    finally:
        broker.stop()
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for line in results:
        print(line)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="SUBSCRIBEs in the throughput run")
    parser.add_argument("--window", type=int, default=256, help="outstanding SUBSCRIBEs (closed loop)")
    parser.add_argument("--rate", type=float, default=1000, help="SUBSCRIBEs/s in the latency run")
    parser.add_argument("--seconds", type=float, default=5, help="length of the latency run")
    parser.add_argument("--phones", type=int, default=1000, help="simulated phone addresses")
    parser.add_argument("--profile", metavar="FILE", help="run the listener under cProfile, stats to FILE")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the in-process CPU per SUBSCRIBE (no broker, no sockets)")
    parser.add_argument("--repeats", type=int, default=7, help="best of this many, in-process CPU runs")
    parser.add_argument("--nice", type=int, default=0,
                        help="nice value for the listener and the phones (e.g. -15 on a shared machine, as root)")
    parser.add_argument("--hops", action="store_true",
                        help="only the in-process trace of answer -> discovery's PUBLISH at --rate")
    parser.add_argument("--send-phones", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send_phones:
        send_phones(args.send_phones, args.rate, args.seconds, args.base)
        return 0
    if args.hops:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"{args.rate:.0f} new phones/s for {args.seconds:g} s, {args.repeats} runs")
        hop_trace(args.rate, args.seconds, args.repeats)
        return 0

    cpus = sorted(os.sched_getaffinity(0))
    listener_cpu, generator_cpu = cpus[0], cpus[-1]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"listener on CPU {listener_cpu}, phones on CPU {generator_cpu}, nice {args.nice}")

    per_subscribe = cpu_per_subscribe(args.requests // 2, args.repeats)
    print(f"CPU per SUBSCRIBE in process, best of {args.repeats} x {args.requests // 2} new phones: "
          + ", ".join(f"{k} {v:.2f} us" for k, v in per_subscribe.items()))
    if args.cpu_only:
        return 0
    new, retx = bench_core(args.requests // 2)
    print(f"core only (parse + answer + discovery), new phones:  {new:8.0f} /s")
    print(f"core only, retransmissions (cached answer):          {retx:8.0f} /s")

    tmp = Path(tempfile.mkdtemp(prefix="pnp-listener-bench-"))
    broker = Mosquitto(tmp / "broker", persistence=False)
    proc: subprocess.Popen | None = None
    phones: Phones | None = None
    log = open(tmp / "listener.log", "wb")
    # SIGTERM (a timeout) unwinds like Ctrl-C, so the finally below stops what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker.start()
        sip_port = free_port()
        env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_SIP_PORT": str(sip_port),
               "PNP_SIP_INTERFACE": "127.0.0.1", "PNP_DATA_DIR": str(tmp / "var"),
               "PNP_INSTANCE": "bench", "PNP_LOG_FORMAT": "json", "PNP_STATUS_INTERVAL": "1"}
        command = [str(ROOT / ".venv/bin/pnp"), "listener"]
        if args.profile:
            command = [sys.executable, "-m", "cProfile", "-o", args.profile, *command]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: (os.sched_setaffinity(0, {listener_cpu}),
                                                    os.nice(args.nice)))
        os.sched_setaffinity(0, {generator_cpu})
        os.nice(args.nice)
        phones = Phones(args.phones, sip_port)
        wait_answering(phones)
        cpu = cpu_seconds(proc.pid)
        rate, lost = closed_loop(phones, args.requests, args.window, base=0)
        time.sleep(0.5)  # let the listener finish publishing what it answered
        cpu = cpu_seconds(proc.pid) - cpu
        print(f"pnp listener, new phones booting, closed loop (window {args.window}): "
              f"{rate:8.0f} answered/s ({args.requests} SUBSCRIBEs, {lost} unanswered)")
        print(f"  listener CPU time: {cpu:.2f} s = {(args.requests - lost) / cpu:8.0f} "
              f"SUBSCRIBEs answered and published per CPU-second")
        rtts, lost = open_loop(phones, args.rate, args.seconds, base=10_000_000)
        ms = [r * 1000 for r in rtts]
        print(f"pnp listener at {args.rate:.0f} SUBSCRIBEs/s for {args.seconds:g} s, send -> answer: "
              f"p50 {percentile(ms, 50):.3f} ms, p99 {percentile(ms, 99):.3f} ms, "
              f"max {max(ms):.3f} ms ({len(ms)} answered, {lost} unanswered)")
        time.sleep(1.5)
        counters = status_counters(broker.url, "bench")
        keys = ("received", "answered", "published", "duplicates", "rate_limited", "malformed",
                "publish_pending", "mqtt_published", "mqtt_queue_overflow")
        print(f"  inside the listener (last 4096 answers of the {args.rate:.0f}/s run), datagram in -> "
              f"answer written: p50 {counters.get('answer_us_p50')} us, "
              f"p99 {counters.get('answer_us_p99')} us, max {counters.get('answer_us_max')} us")
        print("listener counters: " + ", ".join(f"{k} {counters.get(k)}" for k in keys))
    finally:
        if phones is not None:
            phones.close()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
