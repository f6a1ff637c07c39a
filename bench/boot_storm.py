"""Boot-storm benchmark: the whole system on this machine against N simulated phones at once.

For each size: a fresh ``pnp up`` (its own mosquitto, the four services, a temporary data dir,
free ports, loopback only), then ``pnp simulate --assign --boot-over 0`` in its own process:
N phones pre-staged (assignment with vendor and model, files published before they boot), then
all booted at once. The simulator's summary is printed as it is, with the aims checked:

- every phone provisioned, none lost, within 60 s of the first boot;
- p99 SUBSCRIBE->answer <= 10 ms during the storm;
- single phone SUBSCRIBE->NOTIFY p50 <= 5 ms (measured first, phones booting 10 per second).

Bounded: every run has a timeout, and ``pnp up`` is stopped (SIGTERM, then SIGKILL of its own
process group) whatever happens.

    .venv/bin/python bench/boot_storm.py                      # 1000, 5000, 10000
    .venv/bin/python bench/boot_storm.py --sizes 1000 --models GRP2614,T46S,D785,X4U
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.broker import free_port  # noqa: E402

PNP = [sys.executable, "-m", "tools.cli"]


def wait_online(url: str, prefix: str, timeout: float) -> None:
    """Block until the four services report online on the broker."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    online: dict[str, str] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/services/+/+", qos=1)

    def on_message(c, u, msg) -> None:
        try:
            online[msg.topic.split("/")[-2]] = json.loads(msg.payload or b"{}").get("state", "")
        except ValueError:
            pass

    client.on_message = on_message
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.connect(host, int(port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("broker of pnp up never answered")
            time.sleep(0.2)
    client.loop_start()
    try:
        while time.monotonic() < deadline:
            if sum(1 for s in online.values() if s == "online") >= 4:
                return
            time.sleep(0.1)
        raise RuntimeError(f"services not online within {timeout:g}s: {online}")
    finally:
        client.loop_stop()
        client.disconnect()


class System:
    """``pnp up`` in its own process group, on free ports, with a throwaway data dir."""

    def __init__(self, log_path: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pnp-bench-"))
        self.broker_port = free_port()
        self.sip_port = free_port()
        self.http_port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.broker_port}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PNP_DATA_DIR": str(self.dir),
                    "PNP_BROKER_PORT": str(self.broker_port), "PNP_SIP_PORT": str(self.sip_port),
                    "PNP_HTTP_PORT": str(self.http_port), "PNP_SIP_INTERFACE": "127.0.0.1",
                    "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "5"}
        self.env.pop("PNP_MQTT_URL", None)
        self.log = open(log_path, "ab")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "System":
        self.proc = subprocess.Popen(PNP + ["up"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_online(self.url, "pnp", 60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session only
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def simulate(self, count: int, models: str, boot_over: float, timeout: float) -> tuple[dict, int]:
        env = {**self.env, "PNP_MQTT_URL": self.url}
        args = PNP + ["simulate", "--count", str(count), "--models", models, "--assign", "--json",
                      "--boot-over", str(boot_over), "--timeout", str(timeout), "--quiet",
                      "--wait-published", str(max(60, count / 50)), "--notify-timeout", "30"]
        done = subprocess.run(args, env=env, capture_output=True, text=True,
                              timeout=timeout + boot_over + max(60, count / 50) + 60)
        if not done.stdout.strip():
            raise RuntimeError(f"pnp simulate printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(done.stdout), done.returncode


def process_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process under ``root`` (pnp up: the broker
    and the four services), by name."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != root:  # ppid
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        name = "mosquitto" if any("mosquitto" in w for w in words[:1]) else words[-1] if words else entry.name
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_line(before: dict[str, float], after: dict[str, float], simulate: float, wall: float) -> str:
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    used["simulate"] = simulate
    parts = [f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1])]
    return (f"CPU seconds during the run (staging included; {wall:.1f} s wall x {os.cpu_count()} CPUs): "
            + ", ".join(parts) + f"; total {sum(used.values()):.1f}")


def kernel_drops() -> dict[str, int]:
    """Machine-wide counters that explain lost packets: UDP datagrams dropped on full receive
    buffers (SUBSCRIBEs a listener did not read in time), TCP connections dropped on a full
    listen queue (downloads a fileserver did not accept in time)."""
    wanted = {("Udp", "RcvbufErrors"): "udp_rcvbuf_drops", ("TcpExt", "ListenDrops"): "tcp_listen_drops"}
    found: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            proto, _, keys = names.partition(":")
            for key, value in zip(keys.split(), values.partition(":")[2].split()):
                if (proto, key) in wanted:
                    found[wanted[(proto, key)]] = int(value)
    return found


def drops_line(before: dict[str, int], after: dict[str, int]) -> str:
    parts = [f"{k} +{after[k] - before.get(k, 0)}" for k in sorted(after)]
    return "kernel (whole machine, during the run): " + ", ".join(parts) if parts else ""


def summary(name: str, data: dict) -> str:
    lat = data["latency_ms"]
    lines = [f"### {name}",
             f"phones {data['total']}, provisioned {data['provisioned']}, failed {data['failed']}"
             + (f" {data['failures_by_step']}" if data["failed"] else ""),
             f"all provisioned in {data['provisioning_time_s']} s from the first boot; "
             f"throughput {data['throughput_per_s']} phones/s"]
    lines.append(f"{'latency (ms)':<22}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}")
    for key, label in (("subscribe_to_answer", "SUBSCRIBE->answer"), ("subscribe_to_notify", "SUBSCRIBE->NOTIFY"),
                       ("notify_to_file", "NOTIFY->file"), ("boot_to_provisioned", "boot->provisioned")):
        row = lat[key]
        lines.append(f"{label:<22}" + "".join(
            f"{'-' if row[p] is None else format(row[p], '.2f'):>10}" for p in ("p50", "p95", "p99", "max")))
    for f in data["failures"][:10]:
        lines.append(f"  FAILED {f['mac']} {f['vendor']} at {f['step']}: {f['reason']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,10000", help="storm sizes, comma-separated")
    parser.add_argument("--models", default="GRP2614", help="phone models, taken in turn")
    parser.add_argument("--single", type=int, default=100,
                        help="phones for the unloaded single-phone latency run (0 skips) [100]")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound of each simulate run [120]")
    parser.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "pnp-bench-up.log"),
                        help="where pnp up's output goes")
    parser.add_argument("--json-out", default=None, help="also write every report here")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    failed = False
    print(f"# boot storm on {os.cpu_count()} CPU(s); pnp up log: {args.log}", flush=True)
    if args.single:
        with System(Path(args.log)) as system:
            data, code = system.simulate(args.single, args.models, boot_over=args.single / 10, timeout=args.timeout)
        results["single"] = data
        print(summary(f"single phones ({args.single} booting 10/s)", data), flush=True)
        p50 = data["latency_ms"]["subscribe_to_notify"]["p50"]
        print(f"aim: single-phone SUBSCRIBE->NOTIFY p50 <= 5 ms: {p50} ms "
              f"{'OK' if p50 is not None and p50 <= 5 else 'MISSED'}\n", flush=True)
        failed |= code != 0
    for size in [int(x) for x in args.sizes.split(",") if x.strip()]:
        with System(Path(args.log)) as system:
            started = time.monotonic()
            before = kernel_drops()
            cpu_before = process_cpu(system.proc.pid)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            data, code = system.simulate(size, args.models, boot_over=0, timeout=args.timeout)
            after = kernel_drops()
            cpu_after = process_cpu(system.proc.pid)
            done = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.monotonic() - started
        simulate_cpu = done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime
        data["cpu_s"] = {**{k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in cpu_after},
                         "simulate": round(simulate_cpu, 2)}
        data["kernel"] = {k: after[k] - before.get(k, 0) for k in after}
        results[f"storm_{size}"] = data
        print(summary(f"storm of {size} (wall {wall:.1f} s incl. staging)", data), flush=True)
        print(drops_line(before, after), flush=True)
        print(cpu_line(cpu_before, cpu_after, simulate_cpu, wall), flush=True)
        own = data.get("simulator_cpu_s")
        if own:  # the load generator's share: CPU the services did not get
            print(f"pnp simulate itself: staging {own['staging']:.1f} s, phones {own['phones']:.1f} s "
                  f"= {own['phones'] / size * 1000:.2f} ms per phone (the rest of its {simulate_cpu:.1f} s: "
                  f"start-up, imports, planning)", flush=True)
        p99 = data["latency_ms"]["subscribe_to_answer"]["p99"]
        t = data["provisioning_time_s"]
        print(f"aim: all {size} provisioned within 60 s, none lost: "
              f"{data['provisioned']}/{size} in {t} s {'OK' if data['failed'] == 0 and t is not None and t <= 60 else 'MISSED'}")
        print(f"aim: p99 SUBSCRIBE->answer <= 10 ms: {p99} ms "
              f"{'OK' if p99 is not None and p99 <= 10 else 'MISSED'}\n", flush=True)
        failed |= code != 0
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
