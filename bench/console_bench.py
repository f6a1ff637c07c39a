"""Console benchmark: a list of 10,000 devices, and the event stream during a storm.

`pnp console` as its own process on a private mosquitto (loopback, free ports) holding N
devices with four retained topics each (discovered, assignment, config, published). Measured:

  ready       from the console's start until its list holds all N devices
  list        GET / with all N rows (median and max of --loads loads, bytes)
  filtered    GET /?stage=error (the filter alone, few rows)
  storm       M devices get notify + fetched twice (a boot storm's tail: 4 messages each,
              published as fast as paho can) while a browser-like client holds /events open:
              how many rows events arrived, the longest silence between them while the storm
              ran, the time from the storm's last publish to the last device's row, and a list
              load in the middle of it.

  .venv/bin/python bench/console_bench.py [--devices 10000] [--storm 10000] [--loads 5]
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
    ]


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
    def __init__(self, broker_port: int, directory: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "PNP_MQTT_URL": f"mqtt://127.0.0.1:{broker_port}", "PNP_CONSOLE_PORT": str(self.port),
               "PNP_CONSOLE_USERS": f"bench:admin:{hash_password(PASSWORD)}", "PNP_DATA_DIR": str(directory),
               "PNP_LOG_FORMAT": "text", "PNP_INSTANCE": "bench"}
        self.log = open(directory / "console.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "console"], env=env, stdout=self.log,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--storm", type=int, default=10_000, help="devices whose notify/fetched change in the storm")
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = Mosquitto(work / "broker").start()
    try:
        c = client(broker.port)
        t0 = time.monotonic()
        publish_all(c, [(f"pnp/devices/{mac_of(i)}/{kind}", json.dumps(p).encode(), True)
                        for i in range(n) for kind, p in retained(i)])
        print(f"seeded {n} devices x 4 retained topics in {time.monotonic() - t0:.1f} s")

        console = Console(broker.port, work)
        console.login()
        while True:  # a filter that matches nothing: the count, without rendering the rows
            _, _, html = console.get("/?q=no-such-device")
            m = re.search(rb'id="device-count">(\d+)<', html)
            if m and int(m.group(1)) >= n:
                break
            time.sleep(0.1)
        print(f"ready: all {n} devices listed {time.monotonic() - console.started:.2f} s after the console started")

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
