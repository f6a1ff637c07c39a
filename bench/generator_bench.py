"""Generator benchmark: renders per second, the re-render of N devices after a profile change,
and the latency from a pre-staged assignment to its config.

Two measurements:
  core  the engine alone (validate, merge, render, sha256, sqlite), no broker;
  mqtt  `pnp generator` as its own process on a private mosquitto (loopback, free port), driven
        and timed by a paho client: assignments in, configs out.

  .venv/bin/python bench/generator_bench.py [--devices 10000] [--skip-mqtt]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--skip-mqtt", action="store_true")
    parser.add_argument("--skip-core", action="store_true")
    parser.add_argument("--nodelay", action="store_true", help="broker with set_tcp_nodelay true")
    args = parser.parse_args()
    n = max(1, min(args.devices, 50000))
    print(f"generator benchmark, {n} devices, {os.cpu_count()} CPUs")
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
