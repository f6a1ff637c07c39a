"""Console benchmark: a list of 10,000 devices, and the event stream during a storm.

`pnp console` as its own process on a private mosquitto (loopback, free ports) holding N
devices with five retained topics each (discovered, assignment, config, published, files).
Measured:

  ready       from the console's start until its list shows all N devices published
  list        GET / with all N rows (median and max of --loads loads, bytes)
  filtered    GET /?stage=error (the filter alone, few rows)
  storm       M devices get notify + fetched twice (a boot storm's tail: 4 messages each,
              published as fast as paho can) while a browser-like client holds /events open:
              how many rows events arrived, the longest silence between them while the storm
              ran, the time from the storm's last publish to the last device's row, and a list
              load in the middle of it.
  messages    the console's CPU per device message (user + system time of its process, from
              /proc, over every message it took): P phones' full message flow as ``pnp up``
              publishes it (captured from a 300-phone ``pnp simulate --assign``: the staging's
              assignment, config, resync, published, files and enrolment, then the boot's
              discovered, notify, enrolment, fetched and published, 16 messages a phone), once
              with no browser open and once with one holding /events; then the boot part alone
              (the "ready" case, 10 a phone) for P more phones. ``--rate``: phones booting a
              second, each phone's messages spread over its boot (0: as fast as paho sends).
  inprocess   the console's own work per phone (device handlers, table, hub and rows; no paho,
              no broker): the messages phase's first-boot flow handed to its handlers in-process.

  .venv/bin/python bench/console_bench.py [--devices 10000] [--storm 10000] [--loads 5]
  .venv/bin/python bench/console_bench.py --only list
  .venv/bin/python bench/console_bench.py --only messages [--phones 2000] [--rate 500] [--profile FILE]
  .venv/bin/python bench/console_bench.py --only inprocess [--phones 2000] [--rate 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from console.users import hash_password  # noqa: E402
from services.broker import Mosquitto, free_port  # noqa: E402

PASSWORD = "bench-password-1"
PROFILED = """
import cProfile, sys, time
out = sys.argv[1]
from tools import cli
prof = cProfile.Profile(time.process_time)
prof.enable()
try:
    cli.main(sys.argv[2:])
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def mac_of(i: int) -> str:
    return f"000b82{i:06x}"


def retained(i: int) -> list[tuple[str, dict]]:
    mac = mac_of(i)
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return [
        ("discovered", {"mac": mac, "vendor": "grandstream", "model": "GRP2614", "firmware": "1.0.0.31", "ip": ip,
                        "port": 5080, "seen_at": "2026-11-27T02:49:32.678Z", "boot": 1, "v": 1}),
        ("assignment", {"accounts": [{"sip_server": "pbx.example.com", "user_id": str(10000 + i),
                                      "password": f"pw{i}"}]}),
        ("config", {"files": [{"name": f"cfg{mac}.xml", "content": "<gs_provision>" + "x" * 1200 + "</gs_provision>",
                               "encoding": "utf-8", "sha256": "ab" * 32, "size": 1240,
                               "content_type": "application/xml"}],
                    "revision": 1, "mac": mac, "vendor": "grandstream", "model": "GRP2614", "v": 1}),
        ("published", {"url": f"http://10.0.0.1:8080/p/token{i}/", "revision": 1, "mac": mac, "v": 1}),
        ("files", {"files": [{"name": f"cfg{mac}.xml", "sha256": "ab" * 32, "size": 1240}], "revision": 1,
                   "mac": mac, "vendor": "grandstream", "v": 1}),
    ]


def _flow_payloads(i: int, offset: int) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """One phone's messages as the services publish them, (staging, boot), shaped like those
    captured from ``pnp simulate --assign`` on ``pnp up``."""
    mac = mac_of(offset + i)
    user = str(1000 + i)
    secret = f"{i:016x}"
    sha = f"{i:064x}"
    t = "2026-12-07T05:57:14.{:03d}Z"
    url = f"http://127.0.0.1:8080/p/tok{i:020d}/"
    name = f"cfg{mac}.xml"
    params = "".join(f"    <P{n}>{n % 7}</P{n}>\n" for n in range(400, 640))
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<gs_provision version="1">\n  <mac>{mac}</mac>\n'
               f'  <config version="1">\n    <P47>pbx.example.com</P47>\n    <P35>{user}</P35>\n'
               f'    <P34>{secret}</P34>\n{params}  </config>\n</gs_provision>\n')
    enrolment = {"addresses": [], "at": t.format(1), "bound": None, "candidate": None, "epoch": 1, "mac": mac,
                 "reason": "assigned", "since": t.format(1), "state": "enrolling",
                 "until": "2026-12-10T05:57:13.497Z", "v": 1}
    disc = {"boot": 1, "call_id": f"{i}-5080-1@BCH.A.A.D", "contact": "<sip:127.0.0.3:5080>", "cseq": 20000,
            "event": {"model": "GRP2614", "profile-type": "device", "vendor": "Grandstream", "version": "1.0.0.31"},
            "firmware": "1.0.0.31", "from_tag": "2339889997", "from_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>;tag=1",
            "interface": "127.0.0.1", "ip": "127.0.0.3", "mac": mac, "model": "GRP2614", "port": 5080,
            "request_uri": f"sip:MAC%3A{mac.upper()}@224.0.1.75", "seen_at": t.format(2), "to_tag": "f2d2c1917a85",
            "to_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>", "user_agent": "Grandstream GRP2614 1.0.0.31",
            "vendor": "grandstream", "v": 1}
    published = {"enrolling": True, "epoch": 1, "files": [{"name": name, "sha256": sha, "url": url + name}],
                 "mac": mac, "revision": 1, "url": url, "v": 1, "vendor": "grandstream"}
    notify = {"at": t.format(3), "attempts": 1, "call_id": f"{i:020x}@127.0.0.1", "challenged": False, "code": None,
              "kind": "ua-profile", "reason": "", "revision": 1, "rtt_ms": None, "status": "sent",
              "url": "http://127.0.0.1:8080/…", "v": 1}
    fetched = {"at": t.format(5), "auth": "bootstrap", "client": "127.0.0.3", "epoch": 1, "file": name,
               "provisioned": False, "revision": 1, "server": "vm", "sha256": sha, "status": 200,
               "user_agent": f"Grandstream Model HW GRP2614 SW 1.0.0.31 DevId {mac}", "v": 1}
    staging = [
        ("assignment", {"accounts": [{"display_name": f"Sim {user}", "password": secret,
                                      "sip_server": "pbx.example.com", "user_id": user}],
                        "model": "GRP2614", "vendor": "grandstream"}),
        ("config", {"auth": {"password": f"http-{secret}", "previous": None, "rotate": "", "user": mac},
                    "enrol": {"assignment": secret, "rearm": ""},
                    "files": [{"content": content, "content_type": "application/xml", "encoding": "utf-8",
                               "name": name, "sha256": sha, "size": len(content)}],
                    "mac": mac, "model": "GRP2614", "notify_path": "", "revision": 1,
                    "template": "grandstream/grp26xx", "v": 1, "vendor": "grandstream"}),
        ("resync", {"mac": mac, "password": secret, "revision": 1, "username": user, "v": 1}),
        ("published", published),
        ("files", {"files": [{"name": name, "sha256": sha, "size": len(content)}], "mac": mac, "revision": 1,
                   "v": 1, "vendor": "grandstream"}),
        ("enrolment", enrolment),
    ]
    boot = [
        ("discovered", disc),
        ("enrolment", {**enrolment, "candidate": "127.0.0.3", "at": t.format(2)}),
        ("notify", notify),
        ("notify", {**notify, "status": "accepted", "code": 200, "reason": "OK", "rtt_ms": 30.2, "at": t.format(4)}),
        ("enrolment", {**enrolment, "candidate": "127.0.0.3", "bound": "127.0.0.3", "at": t.format(5)}),
        ("fetched", fetched),
        ("discovered", disc),
        ("published", {**published, "enrolling": False}),
        ("enrolment", {**enrolment, "candidate": "127.0.0.3", "bound": "127.0.0.3", "state": "provisioned",
                       "reason": "fetched with its own credentials", "at": t.format(6)}),
        ("fetched", {**fetched, "auth": "device", "provisioned": True, "status": 304, "at": t.format(6)}),
    ]
    return staging, boot


def flow(phones: int, offset: int, part: str, rate: float = 0.0, step: float = 0.1) -> list[tuple[str, bytes, bool]]:
    """``phones`` phones' messages: ``part`` "staging", "boot" or "all". ``rate`` 0: phone
    after phone; else in the order they come when a phone boots every 1/``rate`` s and each of
    its messages follows the one before ``step`` s later (a phone's boot takes about a second)."""
    timed = []
    for i in range(phones):
        stage, boot = _flow_payloads(i, offset)
        mac = mac_of(offset + i)
        chosen = {"staging": stage, "boot": boot, "all": stage + boot}[part]
        for k, (kind, payload) in enumerate(chosen):
            at = i / rate + k * step if rate else 0.0
            timed.append((at, len(timed), (f"pnp/devices/{mac}/{kind}",
                                           json.dumps(payload, separators=(",", ":")).encode(), True)))
    timed.sort()
    return [m for _, _, m in timed]


def publish_paced(c: mqtt.Client, messages: list[tuple[str, bytes, bool]], per_second: float) -> None:
    """Publish ``per_second`` messages a second, a few milliseconds' worth at a time."""
    if not per_second:
        publish_all(c, messages)
        return
    start = time.monotonic()
    infos = []
    sent = 0
    while sent < len(messages):
        due = min(len(messages), int((time.monotonic() - start) * per_second) + 1)
        infos += [c.publish(t, p, qos=1, retain=r) for t, p, r in messages[sent:due]]
        sent = due
        time.sleep(0.002)
    for info in infos:
        info.wait_for_publish(60)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(url_port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    return c


def publish_all(c: mqtt.Client, messages: list[tuple[str, bytes, bool]]) -> None:
    infos = [c.publish(t, p, qos=1, retain=r) for t, p, r in messages]
    for info in infos:
        info.wait_for_publish(60)


class Console:
    def __init__(self, broker_port: int, directory: Path, profile: str | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "PNP_MQTT_URL": f"mqtt://127.0.0.1:{broker_port}", "PNP_CONSOLE_PORT": str(self.port),
               "PNP_CONSOLE_USERS": f"bench:admin:{hash_password(PASSWORD)}", "PNP_DATA_DIR": str(directory),
               "PNP_LOG_FORMAT": "text", "PNP_INSTANCE": "bench"}
        self.log = open(directory / "console.log", "wb")
        self.started = time.monotonic()
        # --profile: the same console under cProfile with a CPU clock, its stats written at exit
        command = (["-c", PROFILED, profile] if profile else ["-m", "tools.cli"]) + ["console"]
        self.proc = subprocess.Popen([sys.executable, *command], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        self.cookie = ""

    def get(self, path: str, body: dict | None = None, cookie: str | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": cookie if cookie is not None else self.cookie}
        data = None
        if body is not None:
            data = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request("POST" if body is not None else "GET", path, body=data, headers=headers)
        r = conn.getresponse()
        out = r.read()
        conn.close()
        cookies = {}
        for line in r.msg.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                cookies[name] = f"{name}={value}"
        return r.status, cookies, out

    def login(self) -> None:
        while True:
            try:
                _, cookies, html = self.get("/login", cookie="")
                break
            except OSError:
                time.sleep(0.05)
        token = re.search(rb'name="csrf" value="([^"]+)"', html).group(1).decode()
        status, cookies, _ = self.get("/login", {"csrf": token, "username": "bench", "password": PASSWORD},
                                      cookie=cookies["pnp_console_login"])
        assert status == 303, status
        self.cookie = cookies["pnp_console"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def rows_in(html: bytes) -> int:
    return html.count(b"<tr data-mac=")


def bench_messages(args: argparse.Namespace) -> None:
    """CPU per device message: the console's process CPU over P phones' flows (see the doc)."""
    phones = args.phones
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = Mosquitto(work / "broker").start()
    try:
        c = client(broker.port)
        console = Console(broker.port, work, args.profile)
        print(f"console pid {console.proc.pid} (for py-spy or perf)", file=sys.stderr, flush=True)
        console.login()
        stop = threading.Event()
        rows_events = [0]

        def watch() -> None:  # a browser on the list page: its event stream, read as it comes
            sock = socket.create_connection(("127.0.0.1", console.port), timeout=120)
            sock.sendall(f"GET /events HTTP/1.0\r\nHost: x\r\nCookie: {console.cookie}\r\n\r\n".encode())
            sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    chunk = sock.recv(1 << 20)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                rows_events[0] += chunk.count(b"event: rows")
            sock.close()

        cases = [("first boot, no browser", True, False), ("first boot, one browser on /events", True, True),
                 ("ready (boot only), no browser", False, False), ("ready (boot only), one browser on /events", False, True)]
        offset = 0
        for name, staging, browser in cases:
            if not staging:  # the ready case: these phones' staging is already on the broker
                publish_all(c, flow(phones, offset, "staging"))
                time.sleep(1.0)  # let the console take them before counting
            messages = flow(phones, offset, "all" if staging else "boot", args.rate)
            sentinel = mac_of(0xFF0000 + offset)
            messages.append((f"pnp/devices/{sentinel}/discovered", b'{"mac":"' + sentinel.encode() + b'"}', False))
            watcher = None
            if browser:
                stop.clear()
                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                time.sleep(0.3)
            before = cpu_of(console.proc.pid)
            t0 = time.monotonic()
            publish_paced(c, messages, args.rate * len(messages) / phones)
            while console.get(f"/devices/{sentinel}")[0] != 200:  # every message before it was taken
                time.sleep(0.2)
            used = cpu_of(console.proc.pid) - before
            wall = time.monotonic() - t0
            stop.set()
            if watcher is not None:
                watcher.join(2)
            count = len(messages) - 1
            print(f"messages, {name}{f' at {args.rate:g} phones/s' if args.rate else ''}: {phones} phones, {count} device messages ({count / phones:.0f} a phone) "
                  f"in {wall:.1f} s: console CPU {used:.2f} s = {used / count * 1e6:.0f} us a message, "
                  f"{used / phones * 1e3:.2f} ms a phone" + (f"; {rows_events[0]} rows events sent" if browser else ""))
            rows_events[0] = 0
            offset += phones
        c.loop_stop()
        c.disconnect()
        console.stop()
    finally:
        broker.stop()


def bench_inprocess(args: argparse.Namespace) -> None:
    """The console's own work per phone, without paho, the broker or the process: the messages
    phase's first-boot flow (at ``--rate``, 500/s if 0) handed to the device handlers as the bus
    would, the hub's batches due every 250 ms of that flow, with no browser and with one admin
    on the list. process_time, best of 3."""
    from collections import Counter

    from twisted.internet.task import Clock

    import console.service as cs
    from console.sessions import Sessions
    from console.table import DeviceTable
    from console.web import Console as Web
    from console.web import load_assets
    from services.mqtt import Incoming
    from services.topics import Topics

    rate = args.rate or 500.0
    phones = args.phones
    messages = flow(phones, 0, "all", rate)
    per_batch = int(len(messages) / (phones / rate) * cs.FLUSH_EVERY)  # messages in 250 ms

    class Ctx:
        topics = Topics("pnp")
        bus = None

        def __init__(self) -> None:
            self.counters: Counter = Counter()

    def run(browser: bool) -> tuple[float, int]:
        clock = Clock()
        table = DeviceTable()
        hub = cs.Hub(clock, lambda macs, admin: web.rows_for(macs, admin),
                     lambda mac, n, admin: web.timeline_for(mac, n, admin))
        service = cs.ConsoleService(Ctx(), table, hub)  # type: ignore[arg-type]
        web = Web(table, service, {}, Sessions(), load_assets(), clock, False)
        sent: list[bytes] = []
        if browser:
            hub.clients.add(cs.Client(sent.append, True, None))
        handlers = {kind: service._device_handler(kind) for kind in cs.DEVICE_KINDS}
        # what the broker sends it: the kinds it subscribed
        incoming = [(handlers[t.rsplit("/", 1)[1]], Incoming(t, p, r)) for t, p, r in messages
                    if t.rsplit("/", 1)[1] in handlers]
        start = time.process_time()
        for i in range(0, len(incoming), per_batch):
            for handler, message in incoming[i:i + per_batch]:
                handler(message)
            clock.advance(cs.FLUSH_EVERY)
        clock.advance(cs.FLUSH_STORM)
        return time.process_time() - start, sum(map(len, sent))

    for browser in (False, True):
        used, size = min(run(browser) for _ in range(3))
        print(f"in-process, first boot at {rate:g} phones/s, {'one admin on the list' if browser else 'no browser'}: "
              f"{used / phones * 1e6:.0f} us a phone" + (f", {size / phones:.0f} bytes streamed a phone" if browser else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--storm", type=int, default=10_000, help="devices whose notify/fetched change in the storm")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--phones", type=int, default=2000, help="phones per case of the messages phase")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages phase: phones booting a second (0: every message as fast as paho sends)")
    parser.add_argument("--only", choices=("list", "messages", "inprocess"), default=None, help="one phase only")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="messages phase: run the console under cProfile (CPU clock), stats to FILE")
    args = parser.parse_args()
    if args.only in (None, "inprocess"):
        bench_inprocess(args)
    if args.only in (None, "messages"):
        bench_messages(args)
    if args.only in (None, "list"):
        bench_list(args)
    return 0


def bench_list(args: argparse.Namespace) -> None:
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = Mosquitto(work / "broker").start()
    try:
        c = client(broker.port)
        t0 = time.monotonic()
        publish_all(c, [(f"pnp/devices/{mac_of(i)}/{kind}", json.dumps(p).encode(), True)
                        for i in range(n) for kind, p in retained(i)])
        print(f"seeded {n} devices x 5 retained topics in {time.monotonic() - t0:.1f} s")

        console = Console(broker.port, work)
        console.login()
        while True:  # a filter that matches nothing: the counts, without rendering the rows
            _, _, html = console.get("/?q=no-such-device")
            m = re.search(rb'>published \((\d+)\)<', html)  # every retained message taken
            if m and int(m.group(1)) >= n:
                break
            time.sleep(0.1)
        print(f"ready: all {n} devices listed as published {time.monotonic() - console.started:.2f} s after "
              f"the console started")

        t = time.monotonic()
        status, _, html = console.get("/")
        first = time.monotonic() - t
        assert status == 200 and rows_in(html) == n
        times, size = [], 0
        for _ in range(args.loads):
            t = time.monotonic()
            status, _, html = console.get("/")
            times.append(time.monotonic() - t)
            size = len(html)
            assert status == 200 and rows_in(html) == n
        print(f"list: GET / with {n} rows: first {first * 1000:.0f} ms (every row folded and built), then median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms, {size / 1e6:.1f} MB")
        rss = next(line.split()[1] for line in open(f"/proc/{console.proc.pid}/status") if line.startswith("VmRSS"))
        print(f"memory: console resident {int(rss) / 1024:.0f} MiB with {n} devices")
        t = time.monotonic()
        console.get("/?stage=error")
        print(f"filtered: GET /?stage=error: {(time.monotonic() - t) * 1000:.0f} ms")

        # The storm, watched through the event stream.
        stream_times: list[float] = []
        last_mac_at: list[float] = []
        target = mac_of(args.storm - 1)
        stop = threading.Event()

        def watch() -> None:
            sock = socket.create_connection(("127.0.0.1", console.port), timeout=120)
            sock.sendall(f"GET /events HTTP/1.0\r\nHost: x\r\nCookie: {console.cookie}\r\n\r\n".encode())
            buf = b""
            while not stop.is_set():
                try:
                    chunk = sock.recv(1 << 20)
                except OSError:
                    break
                if not chunk:
                    break
                now = time.monotonic()
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if b"event: rows" in event:
                        stream_times.append(now)
                        if b'"mac":"' + target.encode() + b'","vendor":"grandstream"' in event and b'"provisioned"' in event:
                            last_mac_at.append(now)
            sock.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.5)
        storm = []
        for step, (status, provisioned) in enumerate((("sent", False), ("accepted", False),
                                                      (200, False), (304, True))):
            for i in range(args.storm):
                mac = mac_of(i)
                if step < 2:
                    storm.append((f"pnp/devices/{mac}/notify", json.dumps(
                        {"status": status, "revision": 1, "at": "2026-11-27T03:00:00.000Z", "attempts": 1}).encode(), True))
                else:
                    storm.append((f"pnp/devices/{mac}/fetched", json.dumps(
                        {"file": f"cfg{mac}.xml", "sha256": "ab" * 32, "status": status, "revision": 1,
                         "provisioned": provisioned, "at": "2026-11-27T03:00:01.000Z"}).encode(), True))
        mid: list[float] = []

        def load_mid() -> None:
            time.sleep(0.5)
            t = time.monotonic()
            console.get("/")
            mid.append(time.monotonic() - t)

        loader = threading.Thread(target=load_mid)
        storm_start = time.monotonic()
        loader.start()
        publish_all(c, storm)
        storm_end = time.monotonic()
        deadline = time.monotonic() + 60
        while not last_mac_at and time.monotonic() < deadline:
            time.sleep(0.05)
        loader.join()
        stop.set()
        # The console works through the storm after the broker took it: its window ends when
        # the last device's row went out.
        end = last_mac_at[0] if last_mac_at else storm_end
        during = [t for t in stream_times if storm_start <= t <= end]
        gaps = [b - a for a, b in zip(during, during[1:])]
        print(f"storm: {len(storm)} messages for {args.storm} devices published in {storm_end - storm_start:.1f} s; "
              f"{len(during)} rows events until the last row, longest silence {max(gaps, default=0) * 1000:.0f} ms; "
              f"last device provisioned on the stream "
              f"{(last_mac_at[0] - storm_end) * 1000 if last_mac_at else float('nan'):.0f} ms after the last publish; "
              f"a list load during the storm took {mid[0] * 1000 if mid else float('nan'):.0f} ms")
        c.loop_stop()
        c.disconnect()
        console.stop()
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
