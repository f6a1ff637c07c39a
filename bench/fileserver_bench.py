"""Config downloads per second and latency: the fileserver, a bare twisted.web resource and nginx.

Starts a private mosquitto, `pnp fileserver` pinned to one CPU (taskset), publishes one
Grandstream-sized config, then runs wrk with a new connection per request (phones do that:
"Connection: close"), for a bounded time. The same bytes are then served, pinned to the same
CPU, by a bare twisted.web resource (bench/fileserver_bare.py: what Twisted alone costs, the
bound the fileserver is held to) and by nginx (one worker, config in a temp dir), so every run
prints the three side by side. Everything stays on 127.0.0.1 and is stopped at the end.

    .venv/bin/python bench/fileserver_bench.py [--seconds 10] [--connections 32] [--size 6000]
                                               [--rounds 1] [--profile FILE]

``--rounds N`` repeats the three measurements N times (interleaved, so load from other work on
the machine falls on all three alike). ``--profile FILE`` runs the fileserver under cProfile
and writes its stats to FILE when it stops (the numbers of that run are then not comparable).

The fileserver is measured on the credentialed URL (``c/{file}``, HTTP Digest with the device's
own password: every download after enrolment), with one Digest answer computed up front and sent
with every request (twisted's nonces last 15 minutes and are not counted), so each request pays
the full check. The bootstrap URL cannot be measured this way: it closes once the same file has
been fetched twice (the phone is provisioned). bench/enrol_checks.py times the checks alone.

Needs wrk (and nginx for the comparison): apt-get install -y wrk nginx-light.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.broker import Mosquitto, free_port  # noqa: E402
from tests.support import Probe, wait_until  # noqa: E402

MAC = "000b82f55284"
UA = f"Grandstream Model HW GRP2614 SW 1.0.0.31 DevId {MAC}"


def config_text(size: int) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<gs_provision version="1">', f"<mac>{MAC}</mac>",
             "<config version=\"1\">"]
    i = 0
    while sum(len(x) + 1 for x in lines) < size - 40:
        lines.append(f"<P{i}>value-{i:05d}</P{i}>")
        i += 1
    lines += ["</config>", "</gs_provision>"]
    return "\n".join(lines) + "\n"


PASSWORD = "bench-device-password-0123456789ab"


def digest_answer(url: str) -> str:
    """The Authorization a phone sends for ``url`` (RFC 7616 MD5, qop=auth), from a fresh
    challenge: valid for the nonce's 15 minutes, from this address."""
    try:
        urllib.request.urlopen(url)
        raise AssertionError(f"{url} answered without credentials")
    except urllib.error.HTTPError as exc:
        challenge = exc.headers["WWW-Authenticate"]
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    uri = urllib.parse.urlsplit(url).path
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    nc, cnonce = "00000001", "0a4f113b"
    realm, nonce = fields["realm"], fields["nonce"]
    ha1, ha2 = md5(f"{MAC}:{realm}:{PASSWORD}"), md5(f"GET:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{MAC}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", opaque="{fields["opaque"]}", qop=auth, '
            f'nc={nc}, cnonce="{cnonce}", algorithm=MD5')


def _get(url: str, headers: dict[str, str]) -> urllib.request.Request:
    return urllib.request.Request(url, headers=headers)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children alive now (nginx's worker)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1] is the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_wrk(url: str, seconds: int, connections: int, cpu: str | None, revalidate: bool = False,
            server_pid: int | None = None, callgrind: Path | None = None,
            headers: dict[str, str] | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           "-H", "Connection: close", "-H", f"User-Agent: {UA}", url]
    for name, value in (headers or {}).items():
        cmd[-1:-1] = ["-H", f"{name}: {value}"]
    if revalidate:
        # the phone's second download: it sends the tag it got, the server answers 304
        tag = urllib.request.urlopen(_get(url, headers or {})).headers["ETag"]
        cmd[-1:-1] = ["-H", f"If-None-Match: {tag}"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    before = cpu_seconds(server_pid) if server_pid else 0.0
    if callgrind:
        subprocess.run(["callgrind_control", "-i", "on", str(server_pid)], capture_output=True, timeout=60)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu_used = cpu_seconds(server_pid) - before if server_pid else 0.0
    instructions = 0
    if callgrind:
        instructions = _callgrind_dump(server_pid, callgrind)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Socket errors:.*", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "requests": int(total.group(1)),
            "socket_errors": errors.group(0) if errors else "none",
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "raw": out,
            # CPU the server spent per download: on a machine shared with other work, downloads/s
            # follows whatever else runs; this follows the server's own cost
            "cpu_us": cpu_used / int(total.group(1)) * 1e6 if server_pid and int(total.group(1)) else 0.0,
            # under --callgrind: user-space instructions per download, the same on a busy machine
            "instructions": instructions / int(total.group(1)) if int(total.group(1)) else 0}


def _callgrind_dump(pid: int, directory: Path) -> int:
    """Instructions callgrind counted in ``pid`` since instrumentation was switched on; off again."""
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, timeout=60)
    counted = 0
    for dump in sorted(directory.glob(f"callgrind.out.{pid}*"), key=lambda f: f.stat().st_mtime):
        m = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
        if m:
            counted = int(m.group(1))  # the newest dump: what was counted since the last one
        dump.unlink()
    return counted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--size", type=int, default=6000, help="config file size in bytes")
    ap.add_argument("--rounds", type=int, default=1, help="measure the three servers this many times")
    ap.add_argument("--server-cpu", default="0", help="CPU the servers are pinned to")
    ap.add_argument("--client-cpu", default="1", help="CPU wrk is pinned to")
    ap.add_argument("--tls", action="store_true", help="HTTPS with a fresh self-signed certificate")
    ap.add_argument("--revalidate", action="store_true",
                    help="send If-None-Match with the server's ETag (measures 304s)")
    ap.add_argument("--profile", metavar="FILE", help="run the fileserver under cProfile, stats to FILE")
    ap.add_argument("--callgrind", action="store_true",
                    help="run the Python servers under valgrind's callgrind and count the instructions "
                         "per download (stable on a loaded machine; rates are then meaningless)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk nginx-light", file=sys.stderr)
        return 2
    seconds = max(1, min(args.seconds, 60))  # bounded, whatever is asked
    load = os.getloadavg()
    rounds = max(1, min(args.rounds, 10))
    tmp = Path(tempfile.mkdtemp(prefix="pnp-fsbench-"))
    tmp.chmod(0o755)
    broker = Mosquitto(tmp / "broker").start()
    procs: list[subprocess.Popen] = []
    results: dict[str, list[dict]] = {}
    scheme = "https" if args.tls else "http"
    try:
        port = free_port()
        tls_env = {}
        if args.tls:
            from tools.certs import make_pair
            cert_pem, key_pem = make_pair(["127.0.0.1"])
            (tmp / "cert.pem").write_bytes(cert_pem)
            (tmp / "key.pem").write_bytes(key_pem)
            tls_env = {"PNP_TLS_CERT": str(tmp / "cert.pem"), "PNP_TLS_KEY": str(tmp / "key.pem")}
            # the bench's own checks trust the fresh certificate
            ssl._create_default_https_context = lambda: ssl.create_default_context(cafile=str(tmp / "cert.pem"))
        env = {**tls_env, **os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp / "data"),
               "PNP_HTTP_PORT": str(port), "PNP_HTTP_BIND": "127.0.0.1",
               "PNP_PUBLIC_URL": f"{scheme}://127.0.0.1:{port}/", "PNP_INSTANCE": "bench",
               "PNP_LOG_FORMAT": "text",
               # under callgrind a status message a second would be counted against few downloads
               "PNP_STATUS_INTERVAL": "3600" if args.callgrind else "1"}
        command = os.environ.get("FSBENCH_SERVER", "-m tools.cli fileserver").split()
        if args.profile:
            command = ["-m", "cProfile", "-o", str(Path(args.profile).resolve()), *command]
        grind: list[str] = []
        if args.callgrind:
            grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                     f"--callgrind-out-file={tmp}/callgrind.out.%p"]
        server = subprocess.Popen(["taskset", "-c", args.server_cpu, *grind, sys.executable, *command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "fileserver.log", "w"))
        procs.append(server)
        probe = Probe(broker.url, f"pnp/devices/{MAC}/published")
        text = config_text(args.size)
        body = text.encode()
        cfg = {"files": [{"name": f"cfg{MAC}.xml", "content_type": "application/xml", "content": text,
                          "encoding": "utf-8", "sha256": hashlib.sha256(body).hexdigest(),
                          "size": len(body)}],
               "revision": 1, "template": "grandstream/grp26xx", "mac": MAC, "vendor": "grandstream",
               "model": "GRP2614", "notify_path": "",
               # the device's own credentials (the generator's), and the epoch they belong to
               "auth": {"user": MAC, "password": PASSWORD, "previous": None},
               "enrol": {"assignment": "bench", "rearm": ""}}
        probe.publish(f"pnp/devices/{MAC}/config", json.dumps(cfg), retain=True)
        wait_until(lambda: probe.last(f"pnp/devices/{MAC}/published"), timeout=120)
        url = f"{scheme}://127.0.0.1:{port}/c/cfg{MAC}.xml"
        authorization = {"Authorization": digest_answer(url)}
        assert urllib.request.urlopen(_get(url, authorization)).read() == body
        probe.close()  # nothing else on the server's CPU while it is measured
        urls = {"fileserver": url}
        pids = {"fileserver": server.pid}
        headers = {"fileserver": authorization}

        www = tmp / "www"
        www.mkdir()
        (www / f"cfg{MAC}.xml").write_bytes(body)
        if not args.tls:  # the bare resource is plain HTTP only
            bport = free_port()
            procs.append(subprocess.Popen(
                ["taskset", "-c", args.server_cpu, *grind, sys.executable, str(ROOT / "bench" / "fileserver_bare.py"),
                 str(bport), str(www / f"cfg{MAC}.xml")], stdout=subprocess.DEVNULL,
                stderr=open(tmp / "bare.log", "w")))
            pids["twisted.web"] = procs[-1].pid
            urls["twisted.web"] = f"http://127.0.0.1:{bport}/cfg{MAC}.xml"
            wait_until(lambda: _answers(urls["twisted.web"]), timeout=120)
        if shutil.which("nginx") and not args.callgrind:
            urls["nginx"] = _start_nginx(tmp, www, args.tls, args.server_cpu, procs)
            pids["nginx"] = procs[-1].pid

        for _ in range(rounds):
            for name, target in urls.items():
                # the bare resource sends no ETag: revalidation is measured on the other two
                if args.revalidate and name == "twisted.web":
                    continue
                results.setdefault(name, []).append(
                    run_wrk(target, seconds, args.connections, args.client_cpu, args.revalidate, pids[name],
                            tmp if args.callgrind else None, headers.get(name)))
        metrics = urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics").read().decode()
        fs_metrics = [line for line in metrics.splitlines() if line.startswith("pnp_fileserver_requests_total")]
        mqtt_published = None if args.callgrind else _status(broker.url).get("counters", {}).get("mqtt_published")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30 if args.profile or args.callgrind else 10)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'HTTPS; ' if args.tls else ''}file: {args.size} bytes"
          f"{' (If-None-Match: 304s)' if args.revalidate else ''}; wrk -t2 -c{args.connections} -d{seconds}s, "
          f"new connection per request; servers pinned to CPU {args.server_cpu}, wrk to CPU {args.client_cpu}; "
          f"load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("CPU/download: the server's CPU time (user + system) per download; 1e6 / it is the rate "
          "one free core would reach")
    print(f"{'round':<6}{'server':<12}{'downloads/s':>12}{'p50':>10}{'p99':>10}{'CPU/download':>14}"
          f"{'requests':>10}{'non-2xx/3xx':>12}  socket errors")
    for i in range(rounds):
        for name, runs in results.items():
            r = runs[i]
            print(f"{i + 1:<6}{name:<12}{r['rps']:>12.0f}{r['p50']:>10}{r['p99']:>10}{r['cpu_us']:>11.0f} us"
                  f"{r['requests']:>10}{r['non_2xx']:>12}  {r['socket_errors']}"
                  + (f"  {r['instructions'] / 1000:.0f}k instructions/download" if args.callgrind else ""))
    if rounds > 1:
        print("range: " + "; ".join(
            f"{name} {min(r['rps'] for r in runs):.0f}-{max(r['rps'] for r in runs):.0f}/s, "
            f"{min(r['cpu_us'] for r in runs):.0f}-{max(r['cpu_us'] for r in runs):.0f} us"
            for name, runs in results.items()))
    print("fileserver /metrics after the runs:", "; ".join(fs_metrics))
    print("fileserver MQTT messages published (one fetched per download):", mqtt_published)
    return 0


def _start_nginx(tmp: Path, www: Path, tls: bool, cpu: str, procs: list[subprocess.Popen]) -> str:
    nport = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
user root;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  types {{ application/xml xml; }}
  client_body_temp_path {tmp}/nb; proxy_temp_path {tmp}/np; fastcgi_temp_path {tmp}/nf;
  uwsgi_temp_path {tmp}/nu; scgi_temp_path {tmp}/ns;
  server {{
    listen 127.0.0.1:{nport}{" ssl" if tls else ""};
    {f"ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;" if tls else ""}
    root {www};
    etag on;
    add_header Cache-Control no-store;
  }}
}}
""")
    procs.append(subprocess.Popen(["taskset", "-c", cpu, "nginx", "-c", str(conf), "-p", str(tmp),
                                   "-e", str(tmp / "nginx-error.log")],
                                  stdout=subprocess.DEVNULL, stderr=open(tmp / "nginx.out", "w")))
    nurl = f"{'https' if tls else 'http'}://127.0.0.1:{nport}/cfg{MAC}.xml"
    try:
        wait_until(lambda: _answers(nurl), timeout=10)
    except AssertionError:
        print((tmp / "nginx.out").read_text(), (tmp / "nginx-error.log").read_text(), file=sys.stderr)
        raise
    return nurl


def _status(url: str) -> dict:
    """The fileserver's status message, once it has refreshed (PNP_STATUS_INTERVAL=1)."""
    probe = Probe(url, "pnp/services/fileserver/bench")
    try:
        time.sleep(1.5)
        return probe.last("pnp/services/fileserver/bench") or {}
    finally:
        probe.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).read()
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
