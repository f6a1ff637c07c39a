"""CPU of the simulated phones themselves (``pnp simulate``'s fleet), per phone, in-process.

The boot storm's load generator shares the machine with the services it measures, so what it
costs per phone is CPU the services do not get. This bench runs the real :class:`Fleet` in this
process against a stand-in PBX in a child process that does the least the real flow asks of a
phone: a 200 OK and an in-dialog NOTIFY with a directory URL; the Plug and Play download (200,
ETag and Repr-Digest); then, after the "reboot", the credentialed route's Digest challenge (401)
and the answer to it (304 for the phone's If-None-Match): three HTTP requests per phone, the
files rendered by the real generator with a config server and password, as in a storm.

Only this process's CPU is counted (getrusage of the simulator, the stand-in's is its own), best
of ``--repeat`` runs; boots are spread at ``--rate`` phones/s so that the stand-in keeps up and
every phone does the same work in each run.

    .venv/bin/python bench/simulate_cpu.py --count 2000 --rate 500 --repeat 3
    .venv/bin/python bench/simulate_cpu.py --count 1000 --profile /tmp/sim.prof   # cProfile, CPU clock
    .venv/bin/python bench/simulate_cpu.py --count 2000 --profile sample:/tmp/sim.txt  # sampled stacks
    SIM_BENCH_GC=700,10,10 .venv/bin/python bench/simulate_cpu.py   # Python's default collector instead
                                                                    # of pnp simulate's settle_gc()
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUP = "224.0.1.75"
_HEADER = re.compile(rb"^([A-Za-z-]+)[ \t]*:[ \t]*(.*?)\r?$", re.M)
PASSWORD = "bench-password-0123456789"


def _headers(data: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in _HEADER.findall(data.split(b"\r\n\r\n", 1)[0]):
        found.setdefault(name.lower(), value)
    return found


def serve(sip_port: int, http_port: int, late: int) -> None:
    """The stand-in PBX (child process): SIP on the group (joined on loopback only), HTTP on
    127.0.0.1 with the bootstrap directory /p/ and the Digest route /c/. With ``late`` > 1 a
    phone's SUBSCRIBEs are held until its ``late``-th, then all answered and one NOTIFY sent: a
    listener behind its queue, as in a storm, where phones retransmit."""
    from twisted.internet import protocol, reactor
    from twisted.web import resource, server

    from fileserver.auth import Authenticator
    from generator.render import Renderer
    from generator.vendors import ConfigServer

    base = f"http://127.0.0.1:{http_port}/"
    renderer = Renderer()
    account = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}
    rendered: dict[tuple[str, str], tuple[bytes, dict[bytes, bytes]]] = {}
    guards: dict[str, Authenticator] = {}

    def file_for(mac: str, vendor: str, model: str, name: str) -> tuple[bytes, dict[bytes, bytes]] | None:
        if (mac, name) not in rendered:
            out = renderer.render(mac, vendor, model, "1", account, ConfigServer(base + "c/", mac, PASSWORD))
            for f in out.files:
                sha = hashlib.sha256(f.body).digest()
                rendered[(mac, f.name)] = (f.body, {
                    b"etag": f'"{sha.hex()}"'.encode(),
                    b"repr-digest": b"sha-256=:" + base64.b64encode(sha) + b":"})
        return rendered.get((mac, name))

    models: dict[str, tuple[str, str]] = {}  # ip -> (vendor, model), learned from the SUBSCRIBE

    class Files(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            path = request.path.decode()
            ip = request.getClientAddress().host
            vendor, model = models.get(ip, ("grandstream", "GRP2614"))
            name = path.rsplit("/", 1)[1]
            mac = re.search(r"([0-9a-f]{12})", name)
            mac_s = mac.group(1) if mac else ""
            if path.startswith("/c/"):
                guard = guards.setdefault(mac_s, Authenticator("digest", mac_s, PASSWORD))
                if not guard.check(request.getHeader(b"authorization"), b"GET", request.uri, ip):
                    request.setResponseCode(401)
                    request.setHeader(b"www-authenticate", guard.challenge(ip).encode())
                    return b""
            found = file_for(mac_s, vendor, model, name)
            if found is None:
                request.setResponseCode(404)
                return b""
            body, headers = found
            for k, v in headers.items():
                request.setHeader(k, v)
            if request.getHeader(b"if-none-match") == headers[b"etag"].decode():
                request.setResponseCode(304)
                return b""
            return body

    site = server.Site(Files())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(http_port, site, interface="127.0.0.1", backlog=4096)

    group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    group.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    group.bind(("", sip_port))
    group.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("127.0.0.1")))
    group.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    group.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    group.setblocking(False)
    held: dict[Any, list[bytes]] = {}
    event = re.compile(rb'vendor="([^"]*)";model="([^"]*)"')

    class Sip(protocol.DatagramProtocol):
        noisy = False
        sequence = 0

        def datagramReceived(self, data: bytes, source: Any) -> None:
            if not data.startswith(b"SUBSCRIBE "):
                return
            held.setdefault(source, []).append(data)
            if len(held[source]) < late:
                return
            for old in held.pop(source)[:-1]:
                self.answer(_headers(old), source)
            h = _headers(data)
            to = self.answer(h, source)
            body = f"{base}p/".encode()
            assert self.transport is not None
            self.transport.write(
                b"NOTIFY sip:%s:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKn%d;rport\r\n"
                % (source[0].encode(), source[1], sip_port, Sip.sequence)
                + b"From: " + to + b"\r\nTo: " + h.get(b"from", b"") + b"\r\nCall-ID: " + h.get(b"call-id", b"")
                + b"\r\nCSeq: 1 NOTIFY\r\nMax-Forwards: 70\r\nEvent: ua-profile\r\nSubscription-State: terminated"
                + b"\r\nContent-Type: application/url\r\nContent-Length: %d\r\n\r\n" % len(body) + body, source)

        def answer(self, h: dict[bytes, bytes], source: Any) -> bytes:
            Sip.sequence += 1
            tag = b"r%d" % Sip.sequence
            m = event.search(h.get(b"event", b""))
            if m:
                vendor = m.group(1).decode().lower()
                model = m.group(2).decode()
                vendor = {"oem": "snom"}.get(vendor, vendor)
                models[source[0]] = (vendor, model.removeprefix("snom"))
            to = h.get(b"to", b"") + b";tag=" + tag
            assert self.transport is not None
            self.transport.write(
                b"SIP/2.0 200 OK\r\nVia: " + h.get(b"via", b"") + b"\r\nFrom: " + h.get(b"from", b"")
                + b"\r\nTo: " + to + b"\r\nCall-ID: " + h.get(b"call-id", b"") + b"\r\nCSeq: "
                + h.get(b"cseq", b"") + b"\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n", source)
            return to

    reactor.adoptDatagramPort(group.fileno(), socket.AF_INET, Sip())
    group.close()  # adopted: the reactor holds its own copy
    print("ready", flush=True)
    reactor.run()


def measure(count: int, models: list[str], rate: float, sip_port: int, profile: str | None) -> dict[str, Any]:
    from twisted.internet import defer, reactor, task

    from tools.simulate.fleet import Fleet, plan, settle_gc
    from tools.simulate.phone import Timing

    result: dict[str, Any] = {}

    @defer.inlineCallbacks
    def run() -> Any:
        import gc

        in_gc = [0.0, 0.0, 0]

        def gc_clock(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                in_gc[1] = time.process_time()
            else:
                in_gc[0] += time.process_time() - in_gc[1]
                in_gc[2] += info["generation"] == 2

        gc.callbacks.append(gc_clock)
        started = time.process_time()
        wall = time.perf_counter()
        idents = plan(count, models)
        fleet = Fleet(idents, sip_port, Timing(reboot_delay=0.2), boot_over=count / rate, timeout=60, seed=1)
        if not os.environ.get("SIM_BENCH_GC"):
            settle_gc()  # as pnp simulate does
        report = yield fleet.run()
        result["cpu"] = time.process_time() - started
        result["wall"] = time.perf_counter() - wall
        result["report"] = report
        gc.callbacks.remove(gc_clock)
        print(f"gc: {in_gc[0]:.3f} s CPU, {in_gc[2]} full collections", file=sys.stderr)
        yield task.deferLater(reactor, 0, lambda: None)

    def main() -> None:
        if os.environ.get("SIM_BENCH_GC"):
            import gc

            gc.set_threshold(*map(int, os.environ["SIM_BENCH_GC"].split(",")))
        d = run()
        d.addErrback(lambda f: result.setdefault("error", f))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    if profile and profile.startswith("sample:"):
        import collections
        import signal

        inclusive: collections.Counter = collections.Counter()
        leaf: collections.Counter = collections.Counter()
        total = [0]

        def sample(signum: int, frame: Any) -> None:
            total[0] += 1
            seen = set()
            f = frame
            first = True
            while f is not None:
                code = f.f_code
                key = f"{Path(code.co_filename).name}:{code.co_name}"
                if first:
                    leaf[key] += 1
                    first = False
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += 1
                f = f.f_back

        signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, 0.0005, 0.0005)
        reactor.run()
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(profile[len("sample:"):], "w") as out:
            out.write(f"samples {total[0]}\n## inclusive\n")
            for k, v in inclusive.most_common(80):
                out.write(f"{v / total[0] * 100:6.1f}% {k}\n")
            out.write("## leaf (Python frame running; C calls count in their caller)\n")
            for k, v in leaf.most_common(50):
                out.write(f"{v / total[0] * 100:6.1f}% {k}\n")
    elif profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)
        prof.runcall(reactor.run)
        prof.dump_stats(profile)
    else:
        reactor.run()
    if "error" in result:
        raise SystemExit(str(result["error"]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--models", default="GRP2614")
    parser.add_argument("--rate", type=float, default=500.0, help="boots per second [500]")
    parser.add_argument("--repeat", type=int, default=3, help="runs, best reported [3]")
    parser.add_argument("--late", type=int, default=3,
                        help="answer each phone's SUBSCRIBEs at its N-th (all of them, then one NOTIFY): "
                             "the retransmissions of a storm [3]")
    parser.add_argument("--profile", default=None, help="one run under cProfile (CPU clock), stats here")
    parser.add_argument("--serve", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    models = [m for m in args.models.split(",") if m]
    from services.broker import free_port

    if args.one:
        sip_port = int(os.environ["SIM_BENCH_SIP_PORT"])
        r = measure(args.count, models, args.rate, sip_port, args.profile)
        rep = r["report"]
        print(f"{len(rep.provisioned)}/{rep.total} {r['cpu']:.3f} {r['wall']:.3f}", flush=True)
        return 0
    runs = []
    for i in range(1 if args.profile else args.repeat):
        sip_port, http_port = free_port(), free_port()
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(sip_port), str(http_port),
                                  str(args.late)],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("the stand-in PBX did not start")
            # Each run in a fresh process: a reactor cannot be restarted.
            cmd = [sys.executable, __file__, "--one", "--count", str(args.count), "--models", args.models,
                   "--rate", str(args.rate)] + (["--profile", args.profile] if args.profile else [])
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.count / args.rate + 120,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), "SIM_BENCH_SIP_PORT": str(sip_port)})
        finally:
            child.terminate()
            child.wait(10)
        for line in out.stderr.splitlines():
            if line.startswith("gc:"):
                print("  " + line, flush=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        done, cpu, wall = out.stdout.split()[-3:]
        runs.append(float(cpu))
        per = float(cpu) / args.count * 1000
        print(f"run {i + 1}: provisioned {done}, simulator CPU {float(cpu):.2f} s = {per:.3f} ms/phone "
              f"(wall {float(wall):.1f} s)", flush=True)
    best = min(runs)
    print(f"best of {len(runs)}: {best:.2f} s CPU for {args.count} phones = {best / args.count * 1000:.3f} ms/phone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
