"""Latency from the wire: real sipp phones booting at a steady rate, timed from a packet capture.

Everything runs inside a network namespace of its own (``unshare -n``; docs: NETWORK-SAFETY.md
rule 3, sipp cannot set IP_MULTICAST_IF): only ``lo`` exists there, so nothing leaves the host.
For each rate and each case, a fresh system, then sipp (``bench/wire_phone.xml``) boots N
Grandstream GRP2614 phones at RATE per second, each with its own MAC (``-inf``, one line per
call), each answering its NOTIFY with 200 OK. tshark captures ``lo``; the SIP packets of the
capture give, per phone (per Call-ID), SUBSCRIBE->answer and SUBSCRIBE->NOTIFY.

Cases:

- ``ready``: files already published. Each phone's assignment, with vendor and model, is
  published and its files rendered and published before the phones boot (a reboot, or a
  pre-staged phone).
- ``first``: first boot, rendering on the path. Each phone's assignment is published before
  the phones boot but without vendor and model (an operator who knows the MAC and the account,
  not the model), so the generator cannot render until the discovery names the model: discovery
  -> generator renders -> config -> fileserver stores -> published -> notifier -> NOTIFY. No
  client of the bench is on that path.
- ``stdlib``: the reference, ``bench/wire_responder.py``: answer and NOTIFY at once from one
  Python process, no broker.

In ``ready`` and ``first`` the system is ``pnp up`` (its own mosquitto and the four services),
with the listener's per-source limit raised (``PNP_SIP_RATE``/``PNP_SIP_BURST``): sipp sends
every phone from one address, as phones behind one relay would. The fileserver's only
per-source limit (``PNP_404_LIMIT``) counts 404s, and sipp downloads nothing, so it stays.
The capture also holds the MQTT traffic: the script times each phone's discovery (and, in the
first-boot case, config and published messages) on its way through the broker, by connection
(``ss`` names the process behind each one), and prints where the milliseconds go.

Bounded: N phones per run, sipp's own timeouts, and ``--max-seconds`` for the whole session;
every process it starts is stopped (its process group) whatever happens. Needs root (for the
namespace) and installs sipp (Debian: sip-tester) and tshark with apt-get when they are missing.

    .venv/bin/python bench/wire_latency.py                            # 2,500 phones at 100, 500, 1000/s
    .venv/bin/python bench/wire_latency.py --phones 2500 --rates 500,1000
    .venv/bin/python bench/wire_latency.py --phones 50 --rates 100 --cases stdlib,ready
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from boot_storm import System, process_cpu  # noqa: E402
from services.broker import free_port  # noqa: E402

SCENARIO = HERE / "wire_phone.xml"
RESPONDER = HERE / "wire_responder.py"
GROUP = "224.0.1.75"
PHONE_IP = "127.0.0.2"  # NETWORK-SAFETY rule 4: the phones are not the server's address
CASES = ("stdlib", "ready", "first")
PERCENTILES = (50, 90, 99)


# --- outside the namespace ---------------------------------------------------------------------

def ensure_tools() -> None:
    """sipp and tshark, installed with apt-get when missing (a bench may; a test never does)."""
    missing = [tool for tool in ("sipp", "tshark") if shutil.which(tool) is None]
    if not missing:
        return
    packages = {"sipp": "sip-tester", "tshark": "tshark"}  # Debian names sipp's package so
    print(f"# installing {', '.join(packages[t] for t in missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # tshark's package asks whether non-root users may capture; no, and no question
    subprocess.run(["debconf-set-selections"],
                   input=b"wireshark-common wireshark-common/install-setuid boolean false\n",
                   env=env, check=False)
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", *[packages[t] for t in missing]]
    if subprocess.run(install, env=env, timeout=1200).returncode != 0:
        # stale package lists are the usual reason: refresh them once
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"], env=env, timeout=1200)
        subprocess.run(install, env=env, check=True, timeout=1200)
    still = [tool for tool in missing if shutil.which(tool) is None]
    if still:
        raise SystemExit(f"could not install {', '.join(still)}")


def outside(args: argparse.Namespace, argv: list[str]) -> int:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("needs root and unshare: everything runs in a network namespace of its own", file=sys.stderr)
        return 2
    ensure_tools()
    print(f"# wire latency; load before: {uptime()}", flush=True)
    command = ["unshare", "-n", "--", sys.executable, str(Path(__file__).resolve()), "--inside", *argv]
    proc = subprocess.Popen(command, start_new_session=True)
    namespace = own_namespace = os.readlink("/proc/self/ns/net")
    for _ in range(200):  # unshare makes the namespace, then runs the inner bench in it
        try:
            namespace = os.readlink(f"/proc/{proc.pid}/ns/net")
        except OSError:
            break
        if namespace != own_namespace:
            break
        time.sleep(0.01)
    try:
        code = proc.wait(args.max_seconds + 60)
    except subprocess.TimeoutExpired:
        code = 1
        print(f"# session over its bound ({args.max_seconds:g} s): stopped", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session only
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if namespace != own_namespace:
            left = stop_namespace(namespace)
            if left:
                print(f"# stopped {left} process(es) left in the bench's namespace", flush=True)
    print(f"# load after: {uptime()}", flush=True)
    return code


def stop_namespace(namespace: str) -> int:
    """SIGKILL whatever still runs in the namespace the bench made: only the bench's own
    processes can be there, and nothing else ends them once the inner bench is gone."""
    stopped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != namespace:
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            stopped += 1
        except OSError:
            continue
    return stopped


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --- processes ---------------------------------------------------------------------------------

class Group:
    """A process in its own session, so that stopping it stops its children too (tshark's
    dumpcap, pnp up's services)."""

    def __init__(self, argv: list[str], log: Path, **kwargs: Any) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.proc.returncode


def wait_for_text(path: Path, text: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}): {path.read_text(errors='replace')[-1500:]}")
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} in {path} within {timeout:g}s")


class Capture:
    """tshark on lo, UDP (SIP) and the broker's TCP port (MQTT), to a pcap file."""

    def __init__(self, work: Path, broker_port: int | None) -> None:
        self.pcap = work / "capture.pcap"
        self.log_path = work / "tshark.log"
        flt = "udp" + (f" or tcp port {broker_port}" if broker_port else "")
        self.group = Group(["tshark", "-i", "lo", "-f", flt, "-B", "64", "-F", "pcap", "-w", str(self.pcap)],
                           self.log_path)
        try:
            wait_for_text(self.log_path, "Capturing on", 20, self.group.proc)
            self._wait_live()
        except BaseException:
            self.group.stop(signal.SIGINT)
            raise

    def _wait_live(self, timeout: float = 20.0) -> None:
        # tshark says "Capturing on" before its dumpcap sees packets: the first phones would be
        # missing from the capture. A marker datagram that reaches the file says it is live.
        marker = b"pnp-wire-capture-live-%d" % os.getpid()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                probe.sendto(marker, ("127.0.0.1", 9))
                time.sleep(0.05)
                if self.pcap.exists() and marker in self.pcap.read_bytes():
                    return
        raise RuntimeError(f"the capture did not show a packet within {timeout:g}s")

    def stop(self) -> str:
        time.sleep(0.5)  # the last datagrams out of the kernel's buffer
        self.group.stop(signal.SIGINT)
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "; ".join(line.strip() for line in lines if "captured" in line or "dropped" in line)


def sipp(work: Path, macs: Iterable[str], sip_port: int, rate: int, count: int, notify_wait: float) -> dict:
    """Boot ``count`` phones at ``rate`` per second; returns sipp's own tally."""
    inject = work / "macs.csv"
    inject.write_text("SEQUENTIAL\n" + "".join(f"{m.upper()}\n" for m in macs))
    bound = count / rate + notify_wait + 15
    argv = ["sipp", f"{GROUP}:{sip_port}", "-sf", str(SCENARIO), "-inf", str(inject), "-i", PHONE_IP,
            "-p", str(free_port(PHONE_IP)), "-t", "u1", "-r", str(rate), "-m", str(count), "-l", str(count),
            "-nostdin", "-recv_timeout", f"{int(notify_wait * 1000)}", "-timeout", f"{int(bound)}s",
            "-buff_size", str(8 << 20), "-max_recv_loops", "10000"]
    out = work / "sipp.out"
    group = Group(argv, out, cwd=work)
    try:
        group.proc.wait(bound + 30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        code = group.stop()
    text = out.read_text(errors="replace")
    tally = {"exit": code}
    for key, label in (("successful", "Successful call"), ("failed", "Failed call")):
        m = re.findall(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", text)
        if m:
            tally[key] = int(m[-1])
    return tally


# --- staging (paho on its own thread, like the other benches' observers) -----------------------

def assignment(mac: str, index: int, with_model: bool) -> dict:
    """One account per phone, as ``pnp simulate --assign`` stages them (tools/simulate/staging.py)."""
    user = str(1001 + index)
    body: dict[str, Any] = {"accounts": [{"sip_server": "pbx.example.com", "user_id": user,
                                          "password": f"pw-{mac[-8:]}", "display_name": f"Wire {user}"}]}
    if with_model:
        body = {"vendor": "grandstream", "model": "GRP2614", **body}
    return body


def stage(url: str, macs: list[str], with_model: bool, timeout: float) -> float:
    """Publish every phone's assignment; return once the generator has handled all of them.

    The last one is a sentinel phone with vendor and model: the generator reads its assignments
    in order, so when the sentinel's files are published every earlier assignment was taken in
    (and, with ``with_model``, every phone's files were published)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    sentinel = "000b82ffffff"
    wanted = set(macs) | {sentinel} if with_model else {sentinel}
    published: set[str] = set()
    done = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.on_connect = lambda c, *_: c.subscribe("pnp/devices/+/published", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        mac = msg.topic.split("/")[2]
        if mac in wanted and msg.payload:
            published.add(mac)
            if len(published) == len(wanted):
                done.set()

    client.on_message = on_message
    started = time.monotonic()
    client.connect(host, int(port))
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("staging client could not subscribe")
        infos = [client.publish(f"pnp/devices/{mac}/assignment", json.dumps(assignment(mac, i, with_model)),
                                qos=1, retain=True) for i, mac in enumerate(macs)]
        for info in infos:
            info.wait_for_publish(timeout)
        client.publish(f"pnp/devices/{sentinel}/assignment", json.dumps(assignment(sentinel, 0, True)),
                       qos=1, retain=True).wait_for_publish(timeout)
        if not done.wait(timeout):
            raise RuntimeError(f"staging: {len(published)} of {len(wanted)} published within {timeout:g}s")
    finally:
        client.loop_stop()
        client.disconnect()
    return time.monotonic() - started


def broker_clients(broker_port: int) -> dict[int, str]:
    """Local port of each client connection to the broker -> the service behind it."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{broker_port} )"],
                         capture_output=True, text=True).stdout
    found: dict[int, str] = {}
    for line in out.splitlines():
        m = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:%d.*pid=(\d+)" % broker_port, line)
        if not m:
            continue
        try:
            argv = Path(f"/proc/{m.group(2)}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        found[int(m.group(1))] = words[-1] if words else m.group(2)
    return found


KERNEL = {("Tcp", "RetransSegs"), ("TcpExt", "TCPLossProbes"), ("TcpExt", "TCPTimeouts"),
          ("TcpExt", "TCPBacklogDrop"), ("TcpExt", "TCPRcvQDrop"), ("TcpExt", "TCPOFOQueue"),
          ("TcpExt", "TCPDSACKRecv"), ("Udp", "RcvbufErrors"), ("Udp", "InErrors")}


def kernel_counters() -> dict[str, int]:
    """The namespace's own TCP/UDP counters (nobody else's traffic is in them): loss recovery on
    the MQTT connections, datagrams dropped on full receive buffers."""
    found: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = Path(path).read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            proto, _, keys = names.partition(":")
            for key, value in zip(keys.split(), values.partition(":")[2].split()):
                if (proto, key) in KERNEL:
                    found[f"{proto}.{key}"] = int(value)
    return found


# --- reading the capture -----------------------------------------------------------------------

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*\d+[ \t]+(\w+)", re.I | re.M)


def udp_payloads(pcap: Path) -> Iterable[tuple[float, bytes, tuple, tuple]]:
    """(timestamp, UDP payload, source, destination) of each IPv4 UDP packet of a pcap file
    (Ethernet or Linux SLL); addresses as raw (IP, port) bytes."""
    data = pcap.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link = {1: 14, 113: 16}.get(linktype)
    if link is None:
        raise RuntimeError(f"capture link type {linktype} not understood")
    offset = 24
    record = struct.Struct(endian + "IIII")
    while offset + 16 <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, offset)
        frame = data[offset + 16: offset + 16 + incl]
        offset += 16 + incl
        if frame[link - 2: link] != b"\x08\x00" or len(frame) < link + 28:
            continue
        ip = frame[link:]
        if ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        source = (ip[12:16], udp[0:2])
        dest = (ip[16:20], udp[2:4])
        yield sec + frac / (1e9 if nanos else 1e6), udp[8:], source, dest


def sip_times(pcap: Path) -> dict[bytes, dict[str, float]]:
    """Per Call-ID: the first SUBSCRIBE, its first final answer, the first NOTIFY, the phone's
    first answer to it (capture times, seconds)."""
    calls: dict[bytes, dict[str, float]] = defaultdict(dict)
    senders: dict[bytes, tuple] = {}
    for ts, payload, source, dest in udp_payloads(pcap):
        call = _CALL_ID.search(payload)
        cseq = _CSEQ.search(payload)
        if call is None or cseq is None:
            continue
        times = calls[call.group(1)]
        method = cseq.group(1).upper()
        if payload.startswith(b"SIP/2.0 "):
            if payload[8:9] in b"23456":
                if method == b"SUBSCRIBE":
                    times.setdefault("answer", ts)
                elif "notify_ok" not in times:
                    times["notify_ok"] = ts
                    # the answer reached the NOTIFY's sender, not the group (the scenario's setdest)
                    times["notify_ok_to_sender"] = float(dest == senders.get(call.group(1)))
        elif payload.startswith(b"SUBSCRIBE "):
            times.setdefault("subscribe", ts)
            times["subscribes"] = times.get("subscribes", 0) + 1
        elif payload.startswith(b"NOTIFY "):
            times.setdefault("notify", ts)
            senders.setdefault(call.group(1), source)
            times["notifies"] = times.get("notifies", 0) + 1
    return calls


def mqtt_times(pcap: Path, broker_port: int,
               clients: dict[int, str]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Two readings of the capture's MQTT packets.

    Per MAC: the first time each (service -> broker) or (broker -> service) PUBLISH of its
    discovered/config/published topic is on the wire, named like ``listener>discovered`` and
    ``discovered>notifier``. Per service: how long it takes to PUBACK what the broker sends it,
    and the most the broker had sent it unacknowledged (the broker's window to a client is
    bounded, so a late PUBACK delays the next message)."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={broker_port},mqtt", "-Y", "mqtt",
                          "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.srcport", "-e", "tcp.dstport",
                          "-e", "mqtt.msgtype", "-e", "mqtt.qos", "-e", "mqtt.msgid", "-e", "mqtt.topic"],
                         capture_output=True, text=True, timeout=600).stdout
    found: dict[str, dict[str, float]] = defaultdict(dict)
    sent: dict[int, dict[str, float]] = defaultdict(dict)  # client port -> msgid -> sent at
    acks: dict[int, list[float]] = defaultdict(list)
    peak: dict[int, int] = defaultdict(int)
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        ts, src, dst = float(parts[0]), int(parts[1]), int(parts[2])
        types = [int(t) for t in parts[3].split(",") if t]
        qos = iter(parts[4].split(","))
        ids = iter(parts[5].split(","))
        topics = iter(parts[6].split(","))
        to_client = src == broker_port
        client = dst if to_client else src
        for kind in types:
            # mqtt.* fields of several packets in one segment come as lists, in packet order
            if kind == 3:
                topic, level = next(topics, ""), next(qos, "0")
                msgid = next(ids, "") if level not in ("", "0") else ""
                if to_client and msgid:
                    sent[client][msgid] = ts
                    peak[client] = max(peak[client], len(sent[client]))
                bits = topic.split("/")
                if len(bits) == 4 and bits[3] in ("discovered", "config", "published"):
                    name = f"{bits[3]}>{clients.get(client, client)}" if to_client else \
                        f"{clients.get(client, client)}>{bits[3]}"
                    found[bits[2]].setdefault(name, ts)
            elif 4 <= kind <= 11:
                msgid = next(ids, "")
                if kind == 4 and not to_client and msgid in sent[client]:
                    acks[client].append((ts - sent[client].pop(msgid)) * 1000)
            elif kind in (8, 10):
                next(topics, "")
    puback = {}
    for client, values in acks.items():
        row = percentiles(values)
        puback[str(clients.get(client, client))] = {
            "p50": round(row["p50"], 3), "p99": round(row["p99"], 3), "max": round(row["max"], 3),
            "count": len(values), "peak_unacked": peak[client]}
    return found, puback


# --- numbers -----------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"max": None}
    ordered = sorted(values)
    last = len(ordered) - 1
    found: dict[str, float | None] = {f"p{p}": ordered[round(last * p / 100)] for p in PERCENTILES}
    found["max"] = ordered[last]
    return found


def measure(calls: dict[bytes, dict[str, float]], phones: int) -> dict[str, Any]:
    booted = [t for t in calls.values() if "subscribe" in t]
    report: dict[str, Any] = {"phones": phones, "booted": len(booted),
                              "subscribe_retransmissions": sum(t["subscribes"] - 1 for t in booted),
                              "notify_retransmissions": sum(t.get("notifies", 1) - 1 for t in booted),
                              "notify_answered": sum(1 for t in booted if t.get("notify_ok_to_sender"))}
    for key, end in (("subscribe_to_answer", "answer"), ("subscribe_to_notify", "notify")):
        values = [(t[end] - t["subscribe"]) * 1000 for t in booted if end in t]
        report[key] = {**{k: None if v is None else round(v, 3) for k, v in percentiles(values).items()},
                       "count": len(values), "lost": phones - len(values)}
    return report


# Who publishes each traced topic, and what each service publishes in answer to.
PRODUCER = {"discovered": "listener", "config": "generator", "published": "fileserver"}
INPUT = {"generator": "discovered", "fileserver": "config"}


def predecessor(name: str, way: dict[str, float]) -> str:
    """The step that ``name`` follows from: what its sender had received, or the publish that
    the broker passed on; the NOTIFY follows the later of the notifier's two inputs."""
    if name == "NOTIFY on the wire":
        inputs = [n for n in ("discovered>notifier", "published>notifier") if n in way]
        return max(inputs, key=way.__getitem__) if inputs else "SUBSCRIBE"
    if name == "answer on the wire":
        return "SUBSCRIBE"
    sender, _, topic = name.partition(">")
    if sender in PRODUCER:  # "topic>service": the broker's copy of the producer's publish
        return f"{PRODUCER.get(sender, '')}>{sender}"
    if sender in INPUT:  # "service>topic": what that service made it from
        return f"{INPUT[sender]}>{sender}"
    return "answer on the wire" if "answer on the wire" in way else "SUBSCRIBE"


def hops(calls: dict[bytes, dict[str, float]], mqtt: dict[str, dict[str, float]],
         mac_of: dict[bytes, str]) -> dict[str, dict[str, Any]]:
    """Each step of a phone's way, in the order of their medians: milliseconds from the
    SUBSCRIBE (p50/p99 over phones), and from the step it follows (the hop's own share: its p99
    says which hop makes the tail)."""
    ways: list[dict[str, float]] = []
    for call_id, times in calls.items():
        mac = mac_of.get(call_id)
        if "subscribe" not in times or mac is None:
            continue
        way = {"SUBSCRIBE": times["subscribe"], **mqtt.get(mac, {})}
        if "answer" in times:
            way["answer on the wire"] = times["answer"]
        if "notify" in times:
            way["NOTIFY on the wire"] = times["notify"]
        ways.append(way)
    after: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)
    follows: dict[str, set[str]] = defaultdict(set)
    for way in ways:
        for name, ts in way.items():
            if name == "SUBSCRIBE":
                continue
            after[name].append((ts - way["SUBSCRIBE"]) * 1000)
            prev = predecessor(name, way)
            if prev in way:
                own[name].append((ts - way[prev]) * 1000)
                follows[name].add(prev)
    report: dict[str, dict[str, Any]] = {}
    for name in sorted(after, key=lambda n: (percentiles(after[n])["p50"], n)):
        total, hop = percentiles(after[name]), percentiles(own[name])
        report[name] = {"p50": round(total["p50"], 3), "p99": round(total["p99"], 3),
                        "from": " or ".join(sorted(follows[name])),
                        **{f"hop_{k}": None if hop[k] is None else round(hop[k], 3) for k in ("p50", "p99", "max")},
                        "count": len(after[name])}
    return report


def call_macs(pcap: Path) -> dict[bytes, str]:
    """Call-ID -> MAC, from the SUBSCRIBEs' Request-URI."""
    found: dict[bytes, str] = {}
    for _, payload, _, _ in udp_payloads(pcap):
        if payload.startswith(b"SUBSCRIBE sip:MAC%3A"):
            call = _CALL_ID.search(payload)
            if call:
                found[call.group(1)] = payload[20:32].decode().lower()
    return found


# --- one run -----------------------------------------------------------------------------------

def boot_phones(result: dict, work: Path, broker_port: int | None, macs: list[str], sip_port: int,
                rate: int, phones: int, notify_wait: float) -> None:
    """sipp's phones boot while the wire is captured; the kernel's counters say what it lost."""
    capture = Capture(work, broker_port)
    before = kernel_counters()
    try:
        result["sipp"] = sipp(work, macs, sip_port, rate, phones, notify_wait)
    finally:
        result["capture"] = capture.stop()
    result["kernel"] = {k: v - before[k] for k, v in kernel_counters().items() if v != before[k]}


def run_case(case: str, rate: int, phones: int, first_mac: int, work: Path, args: argparse.Namespace) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    macs = [f"000b82{first_mac + i:06x}" for i in range(phones)]
    result: dict[str, Any] = {"case": case, "rate": rate}
    started = time.monotonic()
    if case == "stdlib":
        sip_port = free_port()
        responder = Group([sys.executable, str(RESPONDER), str(sip_port)], work / "responder.log")
        try:
            wait_for_text(work / "responder.log", "ready", 10, responder.proc)
            boot_phones(result, work, None, macs, sip_port, rate, phones, args.notify_wait)
        finally:
            responder.stop()
        broker_port, clients, cpu = None, {}, {}
    else:
        system = System(work / "pnp-up.log")
        # sipp's phones all come from one address: a deployment with phones behind one relay
        # raises the listener's per-source token bucket the same way.
        system.env.update({"PNP_SIP_RATE": "1000000", "PNP_SIP_BURST": "1000000",
                           "PNP_NOTIFY_DIALOG": "in-dialog", "PNP_STATUS_INTERVAL": "30"})
        with system:
            result["staging_s"] = round(stage(system.url, macs, case == "ready", args.stage_timeout), 2)
            time.sleep(1.0)  # the notifier reads the same published messages as the staging client
            broker_port, sip_port = system.broker_port, system.sip_port
            clients = broker_clients(broker_port)
            cpu_before = process_cpu(system.proc.pid)
            boot_phones(result, work, broker_port, macs, sip_port, rate, phones, args.notify_wait)
            cpu_after = process_cpu(system.proc.pid)
            cpu = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in cpu_after}
    calls = sip_times(work / "capture.pcap")
    result.update(measure(calls, phones))
    result["cpu_s"] = cpu
    if args.keep:
        (work / "clients.json").write_text(json.dumps({"broker_port": broker_port, "clients": clients}))
    if broker_port and args.trace:
        mqtt, result["puback_ms"] = mqtt_times(work / "capture.pcap", broker_port, clients)
        result["trace_ms"] = hops(calls, mqtt, call_macs(work / "capture.pcap"))
    result["wall_s"] = round(time.monotonic() - started, 1)
    if not args.keep:
        (work / "capture.pcap").unlink(missing_ok=True)
    return result


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_result(r: dict) -> None:
    print(f"\n### {r['case']} at {r['rate']}/s: {r['phones']} phones, {r['booted']} SUBSCRIBEd, "
          f"{r['notify_answered']} answered their NOTIFY to its sender; sipp {r['sipp']}; "
          f"SUBSCRIBE retransmissions {r['subscribe_retransmissions']}, NOTIFY retransmissions "
          f"{r['notify_retransmissions']}; capture: {r['capture']}; wall {r['wall_s']} s"
          + (f" (staging {r['staging_s']} s)" if "staging_s" in r else ""), flush=True)
    print(f"{'ms':<22}" + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "max", "count", "lost")))
    for key, label in (("subscribe_to_answer", "SUBSCRIBE->answer"), ("subscribe_to_notify", "SUBSCRIBE->NOTIFY")):
        row = r[key]
        print(f"{label:<22}" + "".join(f"{fmt(row[p]):>9}" for p in ("p50", "p90", "p99", "max"))
              + f"{row['count']:>9}{row['lost']:>9}")
    print("kernel counters of the namespace during the boots: "
          + (", ".join(f"{k} +{v}" for k, v in sorted(r.get("kernel", {}).items())) or "no change"))
    if r.get("cpu_s"):
        used = sorted(r["cpu_s"].items(), key=lambda kv: -kv[1])
        print("CPU s during the boots: " + ", ".join(f"{k} {v}" for k, v in used))
    if r.get("trace_ms"):
        print("trace ('a>b': a PUBLISH from a to b on the wire), ms over phones:")
        print(f"  {'step':<24}{'after SUBSCRIBE p50':>20}{'p99':>9}{'hop p50':>10}{'p99':>9}{'max':>9}"
              "  hop: from")
        for name, row in r["trace_ms"].items():
            print(f"  {name:<24}{row['p50']:>20.2f}{row['p99']:>9.2f}{fmt(row['hop_p50']):>10}"
                  f"{fmt(row['hop_p99']):>9}{fmt(row['hop_max']):>9}  {row['from']} ({row['count']})")
    if r.get("puback_ms"):
        print("PUBACK of what the broker sends, ms after it: " + "; ".join(
            f"{k} p50 {v['p50']:.2f} p99 {v['p99']:.2f} max {v['max']:.2f} ({v['count']}, at most "
            f"{v['peak_unacked']} unacknowledged)" for k, v in sorted(r["puback_ms"].items())))
    sys.stdout.flush()


def summary_table(results: list[dict]) -> None:
    print("\n## summary (ms; p50 / p90 / p99 / max; lost)")
    print("| rate | case | SUBSCRIBE->answer | lost | SUBSCRIBE->NOTIFY | lost |")
    print("|---|---|---|---|---|---|")
    for r in results:
        a, n = r["subscribe_to_answer"], r["subscribe_to_notify"]
        cells = [" / ".join(fmt(row[p]) for p in ("p50", "p90", "p99", "max")) for row in (a, n)]
        print(f"| {r['rate']}/s | {r['case']} | {cells[0]} | {a['lost']} | {cells[1]} | {n['lost']} |")
    sys.stdout.flush()


class OverTime(Exception):
    pass


def inside(args: argparse.Namespace) -> int:
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(cmd, check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    if len(links) != 1:  # NETWORK-SAFETY rule 3: inside, only lo
        raise SystemExit(f"not in a private network namespace: {links}")

    def over(*_: Any) -> None:
        raise OverTime()

    signal.signal(signal.SIGALRM, over)
    signal.signal(signal.SIGTERM, over)
    signal.alarm(int(args.max_seconds))
    work_root = Path(tempfile.mkdtemp(prefix="pnp-wire-"))
    results: list[dict] = []
    code = 0
    try:
        first_mac = 0x100000
        for rate in [int(x) for x in args.rates.split(",") if x.strip()]:
            for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
                if case not in CASES:
                    raise SystemExit(f"unknown case {case!r}: one of {', '.join(CASES)}")
                r = run_case(case, rate, args.phones, first_mac, work_root / f"{case}-{rate}", args)
                first_mac += args.phones
                results.append(r)
                print_result(r)
                code |= int(r["subscribe_to_notify"]["lost"] > 0)
    except OverTime:
        print(f"# stopped: over --max-seconds ({args.max_seconds:g} s) or asked to stop", flush=True)
        code = 1
    finally:
        signal.alarm(0)
        if results:
            summary_table(results)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2))
        if args.keep:
            print(f"# captures and logs kept in {work_root}")
        else:
            shutil.rmtree(work_root, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phones", type=int, default=2500, help="phones per run [2500]")
    parser.add_argument("--rates", default="100,500,1000", help="boots per second, comma-separated [100,500,1000]")
    parser.add_argument("--cases", default="stdlib,ready,first", help=f"of {', '.join(CASES)} [all]")
    parser.add_argument("--notify-wait", type=float, default=10.0,
                        help="seconds a phone waits for its answer and NOTIFY before it counts as lost [10]")
    parser.add_argument("--stage-timeout", type=float, default=120.0, help="bound of the staging [120]")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="bound of the whole session [1800]")
    parser.add_argument("--no-trace", dest="trace", action="store_false",
                        help="skip the MQTT trace (tshark's decoding of the capture)")
    parser.add_argument("--keep", action="store_true", help="keep captures and logs (their folder is printed)")
    parser.add_argument("--json-out", default=None, help="also write the results here")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phones < 1 or args.phones > 100_000:
        parser.error("--phones: 1 to 100000")
    if args.inside:
        return inside(args)
    return outside(args, argv)


if __name__ == "__main__":
    sys.exit(main())
