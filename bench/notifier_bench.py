"""Notifier benchmarks, loopback only, bounded in count and time.

``endpoint``: NOTIFY transactions per second through one notifier UDP socket (build, send,
match the 200, report), with phones in another process that answer at once.
``service``: the whole notifier on a private mosquitto: N pre-staged phones' discoveries
published at once (or at --service-rate per second), until N ``accepted`` statuses; and the
latency from one discovery's publish to its NOTIFY reaching the phone.
``inproc``: the notifier's own CPU per phone, in this process, with no broker and no sockets
(a bus that drops what is published, a clock for a reactor, datagrams handed over by hand):
per pre-staged phone its ``discovered``, the NOTIFY, the next turn, the phone's 200 OK and two
``fetched`` (the held statuses and the sqlite commits run where they fall: with an answer or on
their timers), --batch phones per reactor turn, the clock
moved on as at --rate phones/s (timers and commits run when they would). Best of --repeat;
paho's cost is not in it. ``before_notify_us``: of ``discovered_us``, the part from the
handler's start to the NOTIFY's write (what the phone waits for).

    .venv/bin/python bench/notifier_bench.py [--count 20000] [--window 500] [--devices 2000]

BENCH_NOTIFIER_SCRIPT=path runs that script as the service's process instead (a profiler, say);
it gets SIGUSR1 just before the burst and just after it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHONE = r"""
import socket, sys
from services.sip.message import parse, build_response
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 0))
s.settimeout(float(sys.argv[2]))
print(s.getsockname()[1], flush=True)
cache = {}
try:
    while True:
        data, addr = s.recvfrom(65535)
        req = parse(data)
        s.sendto(build_response(req, 200, "OK", to_tag="ph", received=addr).to_bytes(), addr)
except socket.timeout:
    pass
"""

DEADLINE = 120.0  # no run goes on longer than this

# --nodelay: from the time the bus (services/mqtt/) and the private broker did not set TCP_NODELAY; both
# do now, so this only adds it to the bench's own clients (and patches what is already set).
NODELAY_NOTIFIER = r"""
import socket, sys
import services.mqtt.bus as bus
_open = bus.Bus._on_socket_open
def _nodelay(self, client, userdata, sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    _open(self, client, userdata, sock)
bus.Bus._on_socket_open = _nodelay
from tools.cli import main
sys.exit(main(["notifier"]))
"""


def start_phone(address: str, idle: float = 5.0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", PHONE, address, str(idle)], stdout=subprocess.PIPE,
                            cwd=str(ROOT), text=True)
    port = int(proc.stdout.readline())
    return proc, port


def discovered(mac: str, ip: str, port: int, call_id: str) -> dict:
    from services.messages import now_iso

    return {"mac": mac, "vendor": "Grandstream", "model": "GRP2614", "firmware": "1.0.0.31",
            "ip": ip, "port": port, "contact": f"<sip:{ip}:{port}>", "user_agent": "bench",
            "call_id": call_id, "from_tag": "ft", "to_tag": "tt", "seen_at": now_iso(),
            "from_uri": f"<sip:MAC%3A{mac}@224.0.1.75>;tag=ft", "to_uri": f"<sip:MAC%3A{mac}@224.0.1.75>",
            "interface": "127.0.0.1", "v": 1}


def bench_endpoint(count: int, window: int) -> dict:
    from twisted.internet import reactor

    from notifier import build
    from notifier.protocol import NotifyEndpoint
    from services.messages import Discovered
    from services.sip.transaction import Outcome, Timers

    phones = [start_phone(f"127.0.0.{i}") for i in (2, 3)]
    counters: Counter = Counter()
    endpoint = NotifyEndpoint(reactor, Timers(), counters)
    port = reactor.listenUDP(0, endpoint, interface="127.0.0.1")
    port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    local = build.Local(*endpoint.local)
    targets = [Discovered.from_json(discovered("000b82f55284", f"127.0.0.{i}", p, "c"))
               for i, (_, p) in zip((2, 3), phones)]
    outcomes: Counter = Counter()
    rtts: list[float] = []
    state = {"sent": 0, "done": 0, "t0": 0.0, "t1": 0.0}

    def send_one() -> None:
        n = state["sent"]
        state["sent"] += 1
        d = targets[n % len(targets)]
        request = build.ua_profile(d, "http://127.0.0.1:8080/p/x/", local, "in-dialog", n + 1)
        endpoint.send(request, build.destination(d), finished)

    def finished(result, answer=None) -> None:
        outcomes[result.outcome.value] += 1
        if result.outcome is Outcome.ACCEPTED:
            rtts.append(result.elapsed * 1000)
        state["done"] += 1
        if state["sent"] < count:
            send_one()
        elif state["done"] == count:
            state["t1"] = time.perf_counter()
            reactor.stop()

    def go() -> None:
        state["t0"] = time.perf_counter()
        for _ in range(min(window, count)):
            send_one()

    reactor.callWhenRunning(go)
    guard = reactor.callLater(DEADLINE, reactor.stop)
    reactor.run()
    if guard.active():
        guard.cancel()
    endpoint.stop()
    for proc, _ in phones:
        proc.kill()
        proc.wait()
    elapsed = (state["t1"] or time.perf_counter()) - state["t0"]
    rtts.sort()
    return {
        "transactions": state["done"], "in_flight": window, "seconds": round(elapsed, 3),
        "per_second": round(state["done"] / elapsed), "outcomes": dict(outcomes),
        "retransmissions": counters["notify_retransmissions"],
        "rtt_ms_p50": round(rtts[len(rtts) // 2], 2) if rtts else None,
        "rtt_ms_p99": round(rtts[int(len(rtts) * 0.99)], 2) if rtts else None,
    }


def machine_busy() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publisher(url: str, nodelay: bool):
    """A paho client for the burst. paho allows 20 unacknowledged QoS 1 messages by default
    (the Probe's limit): that, not the notifier, would set the pace."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    if nodelay:
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    return client


class Statuses:
    """Counts ``accepted`` statuses per device as they arrive, on paho's thread, so the bench's
    own waiting costs nothing (scanning every message every few ms took a core's share)."""

    def __init__(self, url: str, nodelay: bool) -> None:
        import threading

        self.accepted: Counter = Counter()
        self.total = 0
        self.target = 0
        self.done = threading.Event()
        self.changed = threading.Condition()
        self.client = publisher(url, nodelay)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        # QoS 0 on this observer's leg only (the notifier still publishes at QoS 1): its PUBACKs
        # would be the bench's CPU, not the service's. A lost status shows as a timeout.
        self.client.subscribe("pnp/devices/+/notify", qos=0)
        subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        if b'"accepted"' in msg.payload:
            with self.changed:
                self.accepted[msg.topic] += 1
                self.total += 1
                if self.total >= self.target:
                    self.done.set()
                self.changed.notify_all()

    def wait_for(self, topic: str, count: int, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.accepted[topic] >= count, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bench_service(devices: int, latency_samples: int, nodelay: bool, rate: float = 0.0) -> dict:
    """The notifier as a separate OS process, as in production; the bench drives the broker."""
    from services.broker import Mosquitto
    from tests.support import Probe, wait_until

    tmp = Path(tempfile.mkdtemp(prefix="pnp-bench-"))
    broker = Mosquitto(tmp / "broker", extra_config="set_tcp_nodelay true" if nodelay else "").start()
    phone, phone_port = start_phone("127.0.0.2", idle=30.0)
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp / "data"),
           "PNP_INSTANCE": "bench", "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "1"}
    command = ["-c", NODELAY_NOTIFIER] if nodelay else ["-m", "tools.cli", "notifier"]
    if os.environ.get("BENCH_NOTIFIER_SCRIPT"):
        command = [os.environ["BENCH_NOTIFIER_SCRIPT"]]
    proc = subprocess.Popen([sys.executable, *command], env=env, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = Probe(broker.url, ["pnp/services/#"])
    statuses = Statuses(broker.url, nodelay)
    sender = publisher(broker.url, nodelay)
    if nodelay:
        probe.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        wait_until(lambda: (probe.last("pnp/services/notifier/bench") or {}).get("state") == "online", 20)
        macs = [f"0000{i:08x}" for i in range(devices)]
        for mac in macs:
            sender.publish(f"pnp/devices/{mac}/published", json.dumps({
                "url": f"http://127.0.0.1:8080/p/{mac}/", "files": [], "revision": 1, "v": 1}),
                qos=1, retain=True)
        time.sleep(1.0)  # let the notifier store them: pre-staged

        statuses.target = devices
        others = {"broker": broker.process.pid, "phone": phone.pid, "bench": os.getpid()}
        others0 = {name: cpu_seconds(pid) for name, pid in others.items()}
        busy0 = machine_busy()
        cpu0 = cpu_seconds(proc.pid)
        if os.environ.get("BENCH_NOTIFIER_SCRIPT"):
            proc.send_signal(signal.SIGUSR1)  # the script's own numbers, before and after
        t0 = time.perf_counter()
        infos = []
        for i, mac in enumerate(macs):
            if rate:  # paced: a few phones per reactor turn, as a real boot storm at that rate
                ahead = t0 + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            infos.append(sender.publish(f"pnp/devices/{mac}/discovered",
                                        json.dumps(discovered(mac, "127.0.0.2", phone_port, f"call-{mac}")),
                                        qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(30)
        statuses.done.wait(DEADLINE)
        burst = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        if os.environ.get("BENCH_NOTIFIER_SCRIPT"):
            proc.send_signal(signal.SIGUSR1)
        busy1 = machine_busy()
        # Where the rest of the two cores went: the burst is what all of them share.
        others_ms = {f"{name}_cpu_ms_per_notify": round((cpu_seconds(pid) - others0[name]) * 1000 / devices, 3)
                     for name, pid in others.items()}
        if statuses.total < devices:
            raise RuntimeError(f"only {statuses.total} of {devices} accepted in {DEADLINE} s")

        # Latency, one pre-staged phone at a time: discovery published -> NOTIFY on the phone's
        # socket (what decides Plug and Play), and -> the 'accepted' status seen on MQTT.
        from services.sip.message import build_response, parse

        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listening.bind(("127.0.0.3", 0))
        listening.settimeout(5)
        port3 = listening.getsockname()[1]
        wire, status = [], []
        for i in range(latency_samples):
            mac = macs[i]
            topic = f"pnp/devices/{mac}/notify"
            before = statuses.accepted[topic]
            t = time.perf_counter()
            sender.publish(f"pnp/devices/{mac}/discovered",
                           json.dumps(discovered(mac, "127.0.0.3", port3, f"lat-{i}")), qos=1)
            data, addr = listening.recvfrom(65535)
            wire.append((time.perf_counter() - t) * 1000)
            listening.sendto(build_response(parse(data), 200, "OK", to_tag="x", received=addr).to_bytes(), addr)
            statuses.wait_for(topic, before + 1, 5)
            status.append((time.perf_counter() - t) * 1000)
        listening.close()
        wire.sort()
        time.sleep(1.2)  # the next status carries the counters
        counters = (probe.last("pnp/services/notifier/bench") or {}).get("counters", {})
        return {"nodelay": nodelay, "devices": devices, "rate": rate or "burst", "seconds": round(burst, 3),
                "per_second": round(devices / burst),
                "notifier_cpu_ms_per_notify": round(cpu * 1000 / devices, 3), **others_ms,
                # the share of both cores busy during the burst, ours and anyone else's
                "machine_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 2),
                "retransmissions": counters.get("notify_retransmissions"),
                "discovery_to_notify_on_wire_ms_p50": round(statistics.median(wire), 2),
                "discovery_to_notify_on_wire_ms_max": round(wire[-1], 2),
                "discovery_to_accepted_status_ms_p50": round(statistics.median(status), 2)}
    finally:
        sender.loop_stop()
        sender.disconnect()
        statuses.close()
        probe.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        phone.kill()
        phone.wait()
        broker.stop()


class _Bus:
    """Just enough of services.mqtt.Bus: handlers by filter, publishes counted and dropped."""

    connected = False

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}
        self.published = 0

    def subscribe(self, topic_filter, handler, **_) -> None:
        self.handlers[topic_filter.split("/")[-1]] = handler

    def publish(self, topic, payload, retain=False, qos=1, expiry=None) -> bool:
        self.published += 1
        return True

    def on_connect(self, callback) -> None:
        pass

    on_disconnect = on_connect


def bench_inproc(devices: int, batch: int, repeat: int, rate: float = 500.0) -> dict:
    from twisted.internet import task

    import notifier.main
    from services import settings as s
    from services.messages import now_iso
    from services.mqtt import Incoming
    from services.runner import Context
    from services.sip.message import build_response, parse
    from services.topics import Topics

    class Transport:
        def __init__(self, host: str, port: int) -> None:
            self.host, self.port, self.sent, self.written_at = host, port, [], []

        def write(self, data, addr) -> None:
            self.sent.append((data, addr))
            self.written_at.append(time.process_time())

        def getHost(self):
            return self

        def stopListening(self) -> None:
            pass

    class Reactor(task.Clock):
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            protocol.transport = Transport(interface, 5062)
            return protocol.transport

    def one_run() -> dict:
        import gc

        gc.set_threshold(10_000, 20, 20)  # as services.runner.run sets it, and freezes after start
        tmp = Path(tempfile.mkdtemp(prefix="pnp-bench-"))
        settings = s.resolve(s.COMMON + s.CONTRACT + notifier.main.SETTINGS,
                             {"mqtt_url": "mqtt://127.0.0.1:1", "data_dir": str(tmp), "instance": "bench",
                              "sip_interface": "127.0.0.1"}, environ={})
        reactor = Reactor()
        bus = _Bus()
        ctx = Context("notifier", settings, bus, Topics(settings.topic_prefix), reactor, now_iso())
        service = notifier.main.start(ctx)  # as the service wires it (its store's commits)
        endpoint = next(iter(service.endpoints.values()))
        sent = endpoint.transport.sent
        h = bus.handlers
        macs = [f"0000{i:08x}" for i in range(devices)]
        for mac in macs:
            h["published"](Incoming(f"pnp/devices/{mac}/published", json.dumps({
                "url": f"http://127.0.0.1:8080/p/{mac}/", "files": [], "revision": 1, "v": 1}).encode(), True))
        reactor.advance(1)  # their commit
        gc.freeze()

        def discovery(mac: str) -> Incoming:
            return Incoming(f"pnp/devices/{mac}/discovered",
                            json.dumps(discovered(mac, "127.0.0.2", 5060, f"call-{mac}")).encode(), False)

        def downloads(mac: str) -> list[Incoming]:
            # the first download (provisioned false), then the one after the phone's reboot
            return [Incoming(f"pnp/devices/{mac}/fetched", json.dumps({
                "file": f"cfg{mac}.xml", "sha256": "0" * 64, "status": 200, "client": "127.0.0.2",
                "user_agent": "bench", "provisioned": provisioned, "at": now_iso(), "revision": 1,
                "server": "bench", "auth": "bootstrap", "v": 1}).encode(), False)
                for provisioned in (False, True)]

        cpu = {"discovered": 0.0, "turn": 0.0, "answer": 0.0, "fetched": 0.0}
        before_notify = 0.0  # from a discovery's handler to its NOTIFY's write (the hop's CPU)
        written_at = endpoint.transport.written_at
        clock = time.process_time
        for start in range(0, devices, batch):
            chunk = macs[start:start + batch]
            # made per chunk, so the heap the collector walks is the notifier's, not the bench's
            discoveries = [discovery(mac) for mac in chunk]
            fetched = [message for mac in chunk for message in downloads(mac)]
            t = clock()
            written_at.clear()
            for message in discoveries:
                begun = clock()
                h["discovered"](message)
                before_notify += written_at[-1] - begun
            t1 = clock()
            reactor.advance(0)  # the turn's statuses and the sqlite commit
            t2 = clock()
            answers = [(build_response(parse(data), 200, "OK", to_tag="ph", received=addr).to_bytes(), addr)
                       for data, addr in sent]
            sent.clear()
            t3 = clock()
            for data, addr in answers:
                endpoint.datagramReceived(data, addr)
            t4 = clock()
            for message in fetched:
                h["fetched"](message)
            reactor.advance(0)
            reactor.advance(len(chunk) / rate)  # the time the chunk's phones take at --rate
            t5 = clock()
            cpu["discovered"] += t1 - t
            cpu["turn"] += t2 - t1
            cpu["answer"] += t4 - t3
            cpu["fetched"] += t5 - t4
        accepted = service.counters_["notify_accepted"]
        service.stop()
        gc.unfreeze()
        shutil.rmtree(tmp, ignore_errors=True)
        if accepted != devices:
            raise RuntimeError(f"only {accepted} of {devices} accepted")
        per = {f"{k}_us": round(v * 1e6 / devices, 1) for k, v in cpu.items()}
        per["total_us"] = round(sum(cpu.values()) * 1e6 / devices, 1)
        per["before_notify_us"] = round(before_notify * 1e6 / devices, 1)
        per["published_per_phone"] = round(bus.published / devices, 2)
        return per

    runs = [one_run() for _ in range(repeat)]
    best = min(runs, key=lambda r: r["total_us"])
    return {"devices": devices, "batch": batch, "rate": rate, "repeat": repeat, "best": best,
            "totals_us": [r["total_us"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="endpoint: transactions")
    parser.add_argument("--window", type=int, default=500, help="endpoint: in flight at once")
    parser.add_argument("--devices", type=int, default=2000, help="service: pre-staged phones")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1, help="inproc: discoveries per reactor turn")
    parser.add_argument("--rate", type=float, default=500.0, help="inproc: phones per second (of the clock)")
    parser.add_argument("--repeat", type=int, default=5, help="inproc: runs, the best reported")
    parser.add_argument("--service-rate", type=float, default=0.0,
                        help="service: discoveries per second (default: all at once)")
    parser.add_argument("--only", choices=["endpoint", "service", "inproc"])
    parser.add_argument("--nodelay", action="store_true",
                        help="service: TCP_NODELAY on every MQTT connection (broker and clients)")
    args = parser.parse_args()
    if args.only in (None, "service"):
        print("service :", json.dumps(bench_service(min(args.devices, 20000), args.latency_samples, args.nodelay,
                                                   args.service_rate)), flush=True)
    if args.only == "inproc":
        print("inproc  :", json.dumps(bench_inproc(args.devices, args.batch, args.repeat, args.rate)), flush=True)
    if args.only in (None, "endpoint"):
        print("endpoint:", json.dumps(bench_endpoint(min(args.count, 200000), args.window)), flush=True)


if __name__ == "__main__":
    main()
