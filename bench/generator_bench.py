"""Generator benchmark: renders per second, the re-render of N devices after a profile change,
and the latency from a pre-staged assignment to its config.

Four measurements:
  cpu   CPU time per message of the service's handlers (GeneratorService on a recording bus
        and a fake clock, real renderer and sqlite store), best of --rounds: a pre-staged
        assignment, a first boot's discovery (the render on the phone's path), a discovery
        that renders nothing (the ready case), a re-render after a profile change;
  proc  CPU time of the `pnp generator` process per discovery on a private mosquitto, paho
        and the reactor included (first boot and ready case, --rate per second);
  core  the engine alone (validate, merge, render, sha256, sqlite), no broker;
  mqtt  `pnp generator` as its own process on a private mosquitto (loopback, free port), driven
        and timed by a paho client: assignments in, configs out.

  .venv/bin/python bench/generator_bench.py [--devices 10000] [--skip-mqtt]
  .venv/bin/python bench/generator_bench.py --only cpu [--devices 2000 --rounds 5 --profile PART --phone V/M]
  .venv/bin/python bench/generator_bench.py --only proc [--devices 2000 --rate 500 --proc-profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.engine import Engine, Publish  # noqa: E402
from generator.render import Renderer  # noqa: E402
from generator.store import Store  # noqa: E402

PUBLIC_URL = "http://192.168.5.110:8080/"
FAMILIES = [("grandstream", "GRP2614"), ("yealink", "T46S"), ("snom", "D785"), ("fanvil", "X4U")]


def assignment(i: int, vendor: str, model: str) -> dict:
    return {
        "vendor": vendor, "model": model,
        "accounts": [{"sip_server": "pbx.example.com", "user_id": str(10000 + i), "password": f"pw{i}",
                      "display_name": f"User {i}", "transport": "tcp"}],
        "keys": [{"type": "blf", "value": str(20000 + k), "label": f"Key {k}"} for k in range(4)],
    }


def mac_of(i: int) -> str:
    return f"0c{i:010x}"


def core(n: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for vendor, model in FAMILIES:
            # with a public URL, as deployed: each file carries our config server and credential
            engine = Engine(Renderer(), Store(Path(tmp) / f"{vendor}.db"), PUBLIC_URL)
            engine.ready = True
            engine.profile("default", b"{}", {"codecs": ["g722", "pcmu"], "ntp_server": "ntp.example.com"}, None)
            docs = [assignment(i, vendor, model) for i in range(n)]
            raws = [json.dumps(d).encode() for d in docs]
            start = time.perf_counter()
            published = 0
            for i in range(n):
                published += sum(isinstance(e, Publish) for e in engine.assignment(mac_of(i), raws[i], docs[i], None))
                if i % 200 == 199:
                    engine.store.commit()
            engine.store.commit()
            first = time.perf_counter() - start
            assert published == n, published
            profile = {"codecs": ["opus", "g722"], "ntp_server": "ntp2.example.com"}
            start = time.perf_counter()
            macs = engine.profile("default", json.dumps(profile).encode(), profile, None)
            published = 0
            for i, mac in enumerate(macs):
                published += sum(isinstance(e, Publish) for e in engine.render(mac))
                if i % 200 == 199:
                    engine.store.commit()
            engine.store.commit()
            rerender = time.perf_counter() - start
            assert published == n, published
            results[f"{vendor} {model}"] = (n / first, rerender)
            engine.store.close()
    return results


class RecordingBus:
    """What the service needs of ``services.mqtt.Bus``, keeping what it is asked to publish."""

    connected = False

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.handlers: dict[str, object] = {}

    def subscribe(self, topic_filter: str, handler: object, *args: object, **kwargs: object) -> None:
        self.handlers[topic_filter] = handler

    def remove_handler(self, topic_filter: str, handler: object) -> None:
        self.handlers.pop(topic_filter, None)

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> bool:
        self.published.append((topic, payload, retain))
        return True

    def on_connect(self, callback: object) -> None:
        pass

    def on_disconnect(self, callback: object) -> None:
        pass

    def when_subscribed(self) -> object:
        from twisted.internet import defer

        return defer.Deferred()  # never: the bench makes the engine ready itself


def discovered_payload(mac: str, vendor: str, model: str, i: int) -> bytes:
    from services.messages import Discovered

    return Discovered(
        mac=mac, vendor=vendor, model=model, firmware="1.0.5.67", ip="10.0.0.7", port=5060,
        contact=f"<sip:{mac}@10.0.0.7:5060>", user_agent=f"Grandstream {model} 1.0.5.67",
        call_id=f"{i}-call@10.0.0.7", from_tag=f"f{i}", to_tag=f"t{i}", seen_at="2026-12-07T05:00:00.000Z",
        cseq=1, request_uri="sip:MAC%3a" + mac + "@224.0.1.75", from_uri=f"sip:MAC%3a{mac}@10.0.0.7",
        to_uri=f"sip:MAC%3a{mac}@224.0.1.75", event={"profile": "device", "vendor": vendor, "model": model},
        interface="10.0.0.1").to_json()


def cpu(n: int, rounds: int, profile: str | None, phone: str = "grandstream/GRP2614") -> dict[str, float]:
    """CPU (process_time) per message, microseconds, best of ``rounds`` fresh services."""
    import cProfile
    import pstats

    from twisted.internet.task import Clock

    from generator import main as generator_main
    from generator.service import GeneratorService
    from services import settings as s
    from services.messages import now_iso
    from services.mqtt import Incoming
    from services.runner import Context
    from services.topics import Topics

    best: dict[str, float] = {}
    profiler = cProfile.Profile(time.process_time) if profile is not None else None
    vendor, model = phone.split("/")
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            settings = s.resolve(s.COMMON + s.CONTRACT + generator_main.SETTINGS,
                                 {"mqtt_url": "mqtt://127.0.0.1:1", "data_dir": tmp, "instance": "bench",
                                  "public_url": PUBLIC_URL}, environ={})
            clock = Clock()
            bus = RecordingBus()
            ctx = Context("generator", settings, bus, Topics("pnp"), clock, now_iso())  # type: ignore[arg-type]
            service = generator_main.start(ctx)
            assert isinstance(service, GeneratorService)
            service.engine.ready = True
            default = json.dumps({"codecs": ["g722", "pcmu"], "ntp_server": "ntp.example.com"}).encode()
            service.on_profile(Incoming("pnp/profiles/default", default, True))
            clock.advance(1)

            def timed(name: str, messages: list[tuple[object, Incoming]]) -> None:
                profiling = profiler if profiler is not None and r == rounds - 1 and (profile or "") in name else None
                if profiling is not None:
                    profiling.enable()
                start = time.process_time()
                for handler, msg in messages:
                    handler(msg)  # type: ignore[operator]
                    clock.advance(0.002)  # one message a turn, 500 a second: commits as they come
                clock.advance(1)  # the last batched commit belongs to the same work
                spent = time.process_time() - start
                if profiling is not None:
                    profiling.disable()
                per = spent / len(messages) * 1e6
                best[name] = min(best.get(name, per), per)

            def assign(mac: str, doc: dict) -> Incoming:
                return Incoming(f"pnp/devices/{mac}/assignment", json.dumps(doc).encode(), True)

            def discover(mac: str, i: int) -> Incoming:
                return Incoming(f"pnp/devices/{mac}/discovered", discovered_payload(mac, vendor, model, i), True)

            staged = [mac_of(i) for i in range(n)]
            first = [f"0e{i:010x}" for i in range(n)]
            # pre-staged: vendor and model in the assignment, rendered as it arrives
            timed("assignment, pre-staged (render)",
                  [(service.on_assignment, assign(m, assignment(i, vendor, model))) for i, m in enumerate(staged)])
            # first boot: assigned without vendor and model, rendered when the phone says what it is
            bare = [{k: v for k, v in assignment(i, vendor, model).items() if k not in ("vendor", "model")}
                    for i in range(n)]
            timed("assignment, no model (waits)",
                  [(service.on_assignment, assign(m, bare[i])) for i, m in enumerate(first)])
            timed("discovery, first boot (render)",
                  [(service.on_discovered, discover(m, i)) for i, m in enumerate(first)])
            # the ready case: a pre-staged phone boots as what it was staged as
            timed("discovery, ready (no render)",
                  [(service.on_discovered, discover(m, i)) for i, m in enumerate(staged)])
            profile_doc = json.dumps({"codecs": ["opus", "g722"], "ntp_server": "ntp2.example.com"}).encode()
            macs = service.engine.profile("default", profile_doc, json.loads(profile_doc), None)
            timed("re-render after a profile change",
                  [(lambda mac: service.apply(service.engine.render(mac)), mac) for mac in macs])  # type: ignore[misc]
            service.stop()
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    return best


class Watcher:
    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        self.lock = threading.Lock()
        self.configs: dict[str, int] = {}
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        ready = threading.Event()
        def connected(c, *a) -> None:
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.subscribe("pnp/devices/+/config", 1)

        self.client.on_connect = connected
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._message
        self.client.connect(host, int(port))
        self.client.loop_start()
        ready.wait(5)

    def _message(self, client, userdata, msg) -> None:
        if not msg.payload:
            return
        mac = msg.topic.split("/")[2]
        revision = json.loads(msg.payload)["revision"]
        with self.lock:
            self.configs[mac] = revision
            self.arrived[mac] = time.perf_counter()
            self.count += 1

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.005)
        return False


def mqtt_run(n: int, nodelay: bool = False) -> dict:
    from services.broker import Mosquitto

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker", persistence=False,
                           extra_config="set_tcp_nodelay true\n" if nodelay else "").start()
        env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(Path(tmp) / "data"),
               "PNP_INSTANCE": "bench", "PNP_LOG_FORMAT": "text"}
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "generator"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            watcher = Watcher(broker.url)
            time.sleep(1.5)  # the generator connects and settles
            # latency of a pre-staged assignment, one at a time
            latencies = []
            for i in range(50):
                mac = f"0d{i:010x}"
                start = time.perf_counter()
                watcher.client.publish(f"pnp/devices/{mac}/assignment",
                                       json.dumps(assignment(i, "grandstream", "GRP2614")), qos=1, retain=True)
                if not watcher.wait(lambda w: mac in w.arrived, 5):
                    raise RuntimeError("no config for a pre-staged assignment")
                latencies.append((watcher.arrived[mac] - start) * 1000)
            out["prestage_ms"] = (statistics.median(latencies), max(latencies))
            base = watcher.count
            start = time.perf_counter()
            for i in range(n):
                watcher.client.publish(f"pnp/devices/{mac_of(i)}/assignment",
                                       json.dumps(assignment(i, "grandstream", "GRP2614")), qos=1, retain=True)
            if not watcher.wait(lambda w: w.count - base >= n, 120):
                raise RuntimeError(f"only {watcher.count - base} of {n} configs arrived")
            out["assign_per_s"] = n / (time.perf_counter() - start)
            base = watcher.count
            start = time.perf_counter()
            watcher.client.publish("pnp/profiles/default", json.dumps({"ntp_server": "ntp2.example.com"}),
                                   qos=1, retain=True)
            if not watcher.wait(lambda w: w.count - base >= n + 50, 120):
                raise RuntimeError(f"only {watcher.count - base} of {n + 50} re-rendered configs arrived")
            out["profile_rerender_s"] = time.perf_counter() - start
            watcher.client.loop_stop()
            watcher.client.disconnect()
        finally:
            proc.terminate()
            proc.wait(10)
            broker.stop()
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, quiet: float = 0.6, timeout: float = 60) -> None:
    """Wait until the process has spent no CPU for ``quiet`` seconds (its work is done)."""
    deadline = time.monotonic() + timeout
    last, since = process_cpu_s(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process_cpu_s(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def proc_run(n: int, rate: int, profile: str | None = None) -> dict[str, float]:
    """`pnp generator` as its own process: its CPU per discovery, paho and the reactor included,
    with discoveries published at ``rate`` per second (a first boot: the assignment names no model,
    the discovery renders; the ready case: pre-staged and rendered, the discovery renders nothing)."""
    from services.broker import Mosquitto

    out: dict[str, float] = {}
    vendor, model = "grandstream", "GRP2614"
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker", persistence=False).start()
        env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(Path(tmp) / "data"),
               "PNP_INSTANCE": "bench", "PNP_LOG_FORMAT": "text", "PNP_PUBLIC_URL": PUBLIC_URL,
               "PNP_STATUS_INTERVAL": "3600"}
        # cProfile with a CPU clock (its stats written at a clean stop, on SIGTERM)
        profiling = None
        if profile:
            profiling = ["-c", "import cProfile, runpy, sys, time\n"
                         "sys.argv = ['pnp', 'generator']\n"
                         "p = cProfile.Profile(time.process_time)\n"
                         "p.enable()\n"
                         "try:\n    runpy.run_module('tools.cli', run_name='__main__')\n"
                         f"finally:\n    p.disable()\n    p.dump_stats({str(Path(profile).resolve())!r})\n"]
        proc = subprocess.Popen([sys.executable, *(profiling or ["-m", "tools.cli", "generator"])], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            watcher = Watcher(broker.url)
            time.sleep(1.5)  # the generator connects and settles
            settle(proc.pid)
            publish = watcher.client.publish
            staged = [mac_of(i) for i in range(n)]
            first = [f"0e{i:010x}" for i in range(n)]
            for i, mac in enumerate(staged):
                publish(f"pnp/devices/{mac}/assignment", json.dumps(assignment(i, vendor, model)), qos=1, retain=True)
            for i, mac in enumerate(first):
                bare = {k: v for k, v in assignment(i, vendor, model).items() if k not in ("vendor", "model")}
                publish(f"pnp/devices/{mac}/assignment", json.dumps(bare), qos=1, retain=True)
            if not watcher.wait(lambda w: all(m in w.configs for m in staged), 120):
                raise RuntimeError("the pre-staged configs did not all arrive")
            settle(proc.pid)

            def boot(name: str, macs: list[str], configs: bool) -> None:
                payloads = [discovered_payload(mac, vendor, model, i) for i, mac in enumerate(macs)]
                before = process_cpu_s(proc.pid)
                start = time.monotonic()
                for i, (mac, payload) in enumerate(zip(macs, payloads)):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    publish(f"pnp/devices/{mac}/discovered", payload, qos=1, retain=True)
                if configs and not watcher.wait(lambda w: all(m in w.configs for m in macs), 120):
                    raise RuntimeError(f"{name}: the configs did not all arrive")
                settle(proc.pid)
                out[name] = (process_cpu_s(proc.pid) - before) / len(macs) * 1e3

            boot("discovery, first boot (render)", first, True)
            boot("discovery, ready (no render)", staged, False)
            watcher.client.loop_stop()
            watcher.client.disconnect()
        finally:
            proc.terminate()
            proc.wait(10)
            broker.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--skip-mqtt", action="store_true")
    parser.add_argument("--skip-core", action="store_true")
    parser.add_argument("--only", choices=("cpu", "proc", "core", "mqtt"), help="run this measurement alone")
    parser.add_argument("--rate", type=int, default=500, help="proc: discoveries per second")
    parser.add_argument("--phone", default="grandstream/GRP2614", choices=[f"{v}/{m}" for v, m in FAMILIES],
                        help="cpu: the phones' vendor/model")
    parser.add_argument("--proc-profile", metavar="FILE", help="proc: run the generator under cProfile, stats to FILE")
    parser.add_argument("--rounds", type=int, default=5, help="cpu: fresh services, best of them")
    parser.add_argument("--profile", nargs="?", const="", metavar="PART",
                        help="cpu: cProfile (CPU clock) of the last round, of the parts whose name holds PART")
    parser.add_argument("--nodelay", action="store_true", help="broker with set_tcp_nodelay true")
    args = parser.parse_args()
    n = max(1, min(args.devices, 50000))
    print(f"generator benchmark, {n} devices, {os.cpu_count()} CPUs")
    if args.only:
        args.skip_core, args.skip_mqtt = args.only != "core", args.only != "mqtt"
    if args.only == "cpu":
        for name, us in cpu(n, max(1, args.rounds), args.profile, args.phone).items():
            print(f"cpu   {name:34s} {us:8.1f} us per message (best of {args.rounds} x {n})")
    if args.only == "proc":
        for _ in range(max(1, args.rounds)):
            for name, ms in proc_run(n, args.rate, args.proc_profile).items():
                print(f"proc  {name:34s} {ms:8.3f} ms CPU per discovery ({n} at {args.rate}/s)", flush=True)
    for name, (per_s, rerender) in ({} if args.skip_core else core(n)).items():
        print(f"core  {name:18s} {per_s:8.0f} renders/s   profile change -> {n} re-rendered in {rerender:5.2f} s")
    if not args.skip_mqtt:
        r = mqtt_run(n, args.nodelay)
        print(f"mqtt  broker set_tcp_nodelay {'true' if args.nodelay else 'false (mosquitto default)'}")
        print(f"mqtt  pre-staged assignment -> config: median {r['prestage_ms'][0]:.1f} ms, max {r['prestage_ms'][1]:.1f} ms")
        print(f"mqtt  {n} assignments -> configs: {r['assign_per_s']:.0f}/s")
        print(f"mqtt  profile change -> {n + 50} configs re-published: {r['profile_rerender_s']:.2f} s")


if __name__ == "__main__":
    main()
