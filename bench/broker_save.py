"""How long the broker's autosave holds message forwarding: database on disk vs in RAM.

mosquitto (as `pnp up` configures it: autosave every 5 s) is loaded with N devices' worth of
retained state (N messages of S bytes, 8.5 KB by default: a phone's config, files and status),
then a client sends itself a QoS 0 message every ~1 ms through the broker for ``--seconds`` and
records each round trip. A save stalls every message in flight, so the tail of the round trips
is the stall. Two modes, back to back, ``--rounds`` times:

- ``disk``: persistence in a directory on disk (``--disk``), as `pnp up` did before;
- ``ram``: persistence in a private directory on /dev/shm (``--ram``), and a second process
  copying each new save to the disk directory as `pnp up`'s supervisor does
  (services/brokersave.py: write .new, fsync, rename, fsync the directory).

Printed per run: round trips, p50 / p99 / p99.9 / max in ms, how many exceeded 3 ms, the saves
seen, the broker's CPU seconds while probing, the longest round trip away from any save (the
machine's own noise: the machine is shared), and the stall of each save (the longest round trip
sent while it was written and fsynced). With ``--strace``, each save is also timed inside the
broker (opening ``mosquitto.db.new`` to the rename, and its fsync): the broker is
single-threaded, so that span is the stall without the probe's own scheduling noise. With
``--idle`` there is no ping-pong: the broker only saves, and its CPU seconds over the saves are
the CPU of one save (the part of the stall that no faster disk removes). Only loopback is used.

    .venv/bin/python bench/broker_save.py --devices 2500 [--size 8500] [--seconds 31] [--rounds 2] [--strace]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from services import brokersave  # noqa: E402
from services.broker import Mosquitto, answers  # noqa: E402

# A save's file is written for at most this long before its mtime (85 MB: ~0.2 s), and fsynced
# (on disk) for at most this long after it.
SAVE_WINDOW = 0.5
SYNC_WINDOW = 0.4
# The supervisor's copier, as a process of its own (the broker never waits for it).
COPIER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from services import brokersave as b
ram, disk = Path(sys.argv[1]), Path(sys.argv[2])
done, copies = None, 0
while True:
    now = b.identity(ram / b.DB)
    if now is not None and now != done:
        done = b.save_to_disk_niced(ram, disk)
        copies += 1
        print(copies, flush=True)
    time.sleep(b.POLL)
"""


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    disk = Path(tempfile.mkdtemp(prefix="broker-save-", dir=args.disk))
    ram = Path(tempfile.mkdtemp(prefix="broker-save-", dir=args.ram)) if mode == "ram" else None
    broker = Mosquitto(disk, persistence_dir=ram)
    trace = disk / "saves.strace"
    tracer = None
    if args.strace:
        # Only these calls stop the broker (seccomp), so the trace costs it next to nothing. The
        # broker is single-threaded: from opening mosquitto.db.new to the rename it forwards
        # nothing, so that span is the stall itself, timed by the kernel's clock.
        tracer = subprocess.Popen(["strace", "--seccomp-bpf", "-f", "-qq", "-ttt", "-T", "-e",
                                   "trace=openat,fsync,rename", "-o", str(trace), *broker.argv()],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not answers(broker.host, broker.port):
            time.sleep(0.05)
        pid = int(Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()[0])
    else:
        broker.start()
        assert broker.process is not None
        pid = broker.process.pid
    copier = None
    probing = probed = 0.0
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    got = threading.Event()
    arrived = [0.0]

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == "probe":
            arrived[0] = time.perf_counter()
            got.set()

    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe("probe", qos=0)
        payload = base64.b64encode(os.urandom(args.size))[:args.size]
        sent = [client.publish(f"pnp/devices/{i:012x}/config", payload, qos=1, retain=True)
                for i in range(args.devices)]
        for info in sent:
            info.wait_for_publish(120)
        if ram is not None:
            copier = subprocess.Popen([sys.executable, "-c", COPIER, str(ram), str(disk), str(ROOT)],
                                      stdout=subprocess.PIPE, text=True)
        db = (ram or disk) / brokersave.DB
        # one save of the whole load first, so every run probes the same steady state
        start = time.time()
        while not (db.exists() and db.stat().st_mtime > start):
            time.sleep(0.05)
        last = brokersave.identity(db)
        saved_at: list[float] = []  # when each save ended (its file's mtime)
        probing = time.time()
        cpu0 = cpu_seconds(pid)
        rtts: list[float] = []
        sent_at: list[float] = []
        end = time.monotonic() + args.seconds
        while args.idle and time.monotonic() < end:
            now = brokersave.identity(db)
            if now is not None and now != last:
                saved_at.append(now[3] / 1e9)
                last = now
            time.sleep(0.05)
        while time.monotonic() < end:
            got.clear()
            wall, t0 = time.time(), time.perf_counter()
            client.publish("probe", b"x", qos=0)
            if got.wait(5):
                rtts.append((arrived[0] - t0) * 1000)
                sent_at.append(wall)
            now = brokersave.identity(db)
            if now is not None and now != last:
                saved_at.append(now[3] / 1e9)
                last = now
            time.sleep(0.001)
        cpu = cpu_seconds(pid) - cpu0
        size = db.stat().st_size
        probed = time.time()
    finally:
        client.loop_stop()
        client.disconnect()
        if tracer is not None:
            os.kill(pid, signal.SIGTERM)
            tracer.wait(60)
            # the saves made while probing (not the one at stop)
            spans = [(w, f) for at, w, f in save_spans(trace.read_text()) if probing <= at <= probed]
        else:
            broker.stop()
            spans = []
        if copier is not None:
            copier.kill()
            copier.wait()
        shutil.rmtree(disk, ignore_errors=True)
        if ram is not None:
            shutil.rmtree(ram, ignore_errors=True)
    # A save's stall: the longest round trip sent during it (from SAVE_WINDOW before its file's
    # mtime, when it finished writing, to SYNC_WINDOW after: the fsync). The rest is the machine.
    stalls = [max([r for w, r in zip(sent_at, rtts) if end_ - SAVE_WINDOW <= w <= end_ + SYNC_WINDOW],
                  default=0.0) for end_ in saved_at]
    rest = [r for w, r in zip(sent_at, rtts)
            if not any(end_ - SAVE_WINDOW <= w <= end_ + SYNC_WINDOW for end_ in saved_at)]
    ordered = sorted(rtts) or [0.0]

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    return {"mode": mode, "n": len(rtts), "p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999),
            "max": ordered[-1], "over3": sum(1 for r in rtts if r > 3), "saves": len(saved_at),
            "stalls": stalls, "rest": max(rest, default=0.0), "cpu": cpu, "mb": size / 1e6,
            "spans": spans}


def save_spans(strace: str) -> list[tuple[float, float, float]]:
    """(when it began, whole save ms, its fsync ms) for each save in an ``strace -ttt -T`` log."""
    spans, opened, synced = [], None, 0.0
    for line in strace.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():  # -f: the pid first
            parts = parts[1:]
        if len(parts) < 2:
            continue
        line = " ".join(parts)
        at = float(parts[0])
        took = float(line.rsplit("<", 1)[1].rstrip(">")) if line.endswith(">") else 0.0
        if "openat(" in line and ".db.new" in line:
            opened, synced = at, 0.0
        elif line.split(None, 1)[1].startswith("fsync(") and opened is not None:
            synced += took
        elif "rename(" in line and opened is not None:
            spans.append((opened, (at + took - opened) * 1000, synced * 1000))
            opened = None
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2500)
    parser.add_argument("--size", type=int, default=8500, help="bytes retained per device")
    parser.add_argument("--seconds", type=float, default=31.0, help="probing time per run (a save every 5 s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--disk", default="/var/tmp", help="parent of the on-disk directories")
    parser.add_argument("--ram", default="/dev/shm", help="parent of the RAM directories")
    parser.add_argument("--modes", default="disk,ram")
    parser.add_argument("--idle", action="store_true",
                        help="no ping-pong: the broker only saves, so its CPU s / saves is the CPU of a save")
    parser.add_argument("--strace", action="store_true",
                        help="also time each save inside the broker (strace --seccomp-bpf: open .new to rename)")
    args = parser.parse_args()
    print(f"# broker save stall: {args.devices} x {args.size} B retained, {args.seconds:g} s per run, "
          f"disk {args.disk}, ram {args.ram}; load before {uptime()}", flush=True)
    print(f"{'mode':<6}{'db MB':>7}{'probes':>8}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>8}"
          f"{'>3ms':>6}{'saves':>6}{'CPU s':>7}{'max away':>9}  stall of each save (ms)")
    for _ in range(args.rounds):
        for mode in args.modes.split(","):
            r = run(mode, args)
            print(f"{r['mode']:<6}{r['mb']:>7.1f}{r['n']:>8}{r['p50']:>8.2f}{r['p99']:>8.2f}"
                  f"{r['p999']:>8.2f}{r['max']:>8.1f}{r['over3']:>6}{r['saves']:>6}{r['cpu']:>7.2f}"
                  f"{r['rest']:>9.1f}  {' '.join(f'{x:.1f}' for x in r['stalls'])}", flush=True)
            if args.idle and r["saves"]:
                print(f"{'':<6}idle: broker CPU per save {r['cpu'] * 1000 / r['saves']:.1f} ms", flush=True)
            if r["spans"]:
                print(f"{'':<6}strace, each save: whole (its fsync) ms: "
                      + " ".join(f"{w:.1f} ({f:.1f})" for w, f in r["spans"]), flush=True)
    print(f"# load after {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
