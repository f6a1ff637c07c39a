"""CPU per phone of a running `pnp fileserver` on its MQTT side, through a real broker.

Starts a private mosquitto and `pnp fileserver` (from this tree, or ``--tree DIR``: another
checkout, to compare), then, at ``--rate`` messages a second, what a boot storm sends it:

1. ``config``: a first boot's config per phone (stored; ``published``, ``files``,
   ``enrolment`` published and their echoes read back);
2. ``discovered, first``: the ready case: each phone's discovery while its device enrols (it
   becomes the candidate: ``enrolment`` published, and its echo);
3. ``discovered, again``: the same discoveries again (nothing changes);
4. ``discovered, not ours``: discoveries of MACs the fileserver holds nothing for (a first
   boot's discovery, before its config).

Each phase's number is the fileserver process's CPU time (user + system, /proc) from its first
message to the moment its effect was seen, divided by the phones: paho, the reactor and the
store included, which the in-process bench (bench/fileserver_phone.py) leaves out. Phases 3 and
4 end with one discovery that does move something, seen when everything before it was handled.

    .venv/bin/python bench/fileserver_mqtt.py [--phones 1000] [--rate 500] [--tree DIR]

``FSMQTT_PROFILE=FILE`` runs the fileserver under cProfile (its numbers are then not comparable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fileserver_bench import cpu_seconds  # noqa: E402
from services.broker import Mosquitto, free_port  # noqa: E402
from tests.support import Probe, wait_until  # noqa: E402


def config(mac: str) -> bytes:
    text = "<gs_provision>" + f"P270=Alice {mac}\n" * 300 + "</gs_provision>\n"
    body = text.encode()
    return json.dumps({
        "files": [{"name": f"cfg{mac}.xml", "content_type": "application/xml", "content": text,
                   "encoding": "utf-8", "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}],
        "revision": 1, "template": "grandstream/grp26xx", "mac": mac, "vendor": "grandstream",
        "model": "GRP2614", "notify_path": f"cfg{mac}.xml",
        "auth": {"user": mac, "password": f"pw-{mac}", "previous": None},
        "enrol": {"assignment": "a" * 64, "rearm": ""}, "v": 1}).encode()


def discovered(mac: str, ip: str) -> bytes:
    return json.dumps({"mac": mac, "vendor": "grandstream", "model": "GRP2614", "firmware": "1.0.0.31",
                       "ip": ip, "port": 5060, "contact": f"<sip:{mac}@{ip}:5060>",
                       "user_agent": "Grandstream GRP2614 1.0.0.31", "call_id": f"c-{mac}",
                       "from_tag": "f", "to_tag": "t", "seen_at": "2026-12-07T05:00:00.000Z",
                       "v": 1}).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0, help="messages per second sent to it")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose fileserver runs")
    args = ap.parse_args()
    n = max(1, min(args.phones, 20000))
    tmp = Path(tempfile.mkdtemp(prefix="pnp-fsmqtt-"))
    tmp.chmod(0o755)
    broker = Mosquitto(tmp / "broker").start()
    server: subprocess.Popen | None = None
    probe: Probe | None = None
    rows: list[tuple[str, float]] = []
    try:
        port = free_port()
        env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp / "data"),
               "PNP_HTTP_PORT": str(port), "PNP_HTTP_BIND": "127.0.0.1",
               "PNP_PUBLIC_URL": f"http://127.0.0.1:{port}/", "PNP_INSTANCE": "bench",
               "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "3600", "PYTHONPATH": str(args.tree)}
        command = ["-m", "tools.cli", "fileserver"]
        if os.environ.get("FSMQTT_PROFILE"):  # cProfile's stats of the whole run to that file
            command = ["-m", "cProfile", "-o", os.environ["FSMQTT_PROFILE"], *command]
        server = subprocess.Popen([sys.executable, *command], env=env,
                                  cwd=args.tree, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "fileserver.log", "w"))
        probe = Probe(broker.url, ["pnp/devices/+/published", "pnp/devices/+/enrolment",
                                   "pnp/services/fileserver/bench"])
        wait_until(lambda: probe.on("pnp/services/fileserver/bench"), timeout=60)
        time.sleep(1.0)  # its start-up (the keeper's first check) is not measured
        macs = [f"000b83{i:06x}" for i in range(n + 3)]
        phones, spare = macs[:n], macs[n:]
        ip = {mac: f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i, mac in enumerate(macs)}
        pid = server.pid

        def phase(label: str, messages: list[tuple[str, bytes]], done: Callable[[], Any]) -> None:
            assert probe is not None
            before = cpu_seconds(pid)
            gap, start = 1.0 / args.rate, time.monotonic()
            for i, (topic, payload) in enumerate(messages):
                ahead = start + i * gap - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                probe.client.publish(topic, payload, qos=1, retain=True)
            wait_until(done, timeout=120 + len(messages) / args.rate, interval=0.2)
            rows.append((label, (cpu_seconds(pid) - before) / n * 1e6))

        def latest() -> dict[str, bytes]:
            assert probe is not None
            with probe._lock:
                return {topic: payload for topic, payload, _ in probe.messages}

        def candidates(macs: list[str]) -> Callable[[], bool]:
            def check() -> bool:
                last = latest()
                return all(json.loads(last.get(f"pnp/devices/{m}/enrolment") or b"{}").get("candidate")
                           == ip[m] for m in macs)
            return check

        def published(macs: list[str]) -> Callable[[], bool]:
            def check() -> bool:
                last = latest()
                return all(f"pnp/devices/{m}/published" in last for m in macs)
            return check

        # the spare devices get their configs first: each later phase ends with one of them
        all_configs = [(f"pnp/devices/{m}/config", config(m)) for m in spare + phones]
        for topic, payload in all_configs[:len(spare)]:
            probe.publish(topic, payload, retain=True)
        wait_until(published(spare), timeout=60)
        phase("config, first boot", all_configs[len(spare):], published(phones))
        disc = [(f"pnp/devices/{m}/discovered", discovered(m, ip[m])) for m in phones]
        phase("discovered, first (becomes the candidate)", disc, candidates(phones))
        phase("discovered, again (nothing changes)",
              disc + [(f"pnp/devices/{spare[0]}/discovered", discovered(spare[0], ip[spare[0]]))],
              candidates([spare[0]]))
        strangers = [f"000b84{i:06x}" for i in range(n)]
        phase("discovered, not ours (a first boot's, before its config)",
              [(f"pnp/devices/{m}/discovered", discovered(m, "10.99.0.1")) for m in strangers]
              + [(f"pnp/devices/{spare[1]}/discovered", discovered(spare[1], ip[spare[1]]))],
              candidates([spare[1]]))
    finally:
        if probe is not None:
            probe.close()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"fileserver from {args.tree}; {n} phones at {args.rate:.0f} messages/s; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("fileserver CPU (user + system) per phone, microseconds:")
    for label, us in rows:
        print(f"{us:8.0f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
