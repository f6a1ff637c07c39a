"""CPU per phone on the fileserver's MQTT side, in process: the handlers a boot storm calls,
with a bus that only records what is published (no broker, no sockets), a real store (sqlite
in a temp dir, committed once per batch of phones, as the reactor does per turn) and the real
keeper.

    .venv/bin/python bench/fileserver_phone.py [--phones 2000] [--repeat 5] [--http]

Each row is microseconds of CPU (time.process_time) per phone, best of --repeat runs, each run
on fresh MACs:

- ``discovered, first``: a phone's discovery while its device is enrolling (it becomes the
  candidate: saved, ``enrolment`` published);
- ``discovered, again``: the same phone from the same address (nothing changes);
- ``discovered, not ours``: a MAC the fileserver holds no record of (a first boot's discovery);
- ``config, first``: a first boot's config (decoded, stored, ``published``/``files``/
  ``enrolment`` published);
- ``echo of published+files+enrolment``: our own retained messages coming back;
- ``download, bootstrap 200`` and ``download, credentialed 200``: what the MQTT side does for a
  download the HTTP side answered (``fetched``, enrolment moves), not the HTTP work.

``--http`` replaces the download rows with a phone's three requests whole, each on a new
in-memory connection through the real site and channel (no socket, no reactor, no kernel:
what the fileserver's Python costs per request): the bootstrap download, the credentialed
URL's 401 challenge and the credentialed download with a valid Digest, beside a bare
twisted.web leaf (bench/fileserver_bare.py) through the same connection. bench/fileserver_bench.py
measures the same over real sockets (it needs wrk).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from twisted.web import server  # noqa: E402

from bench.fileserver_bare import Bare  # noqa: E402
from fileserver.abuse import NotFoundLimiter  # noqa: E402
from fileserver.catalog import Catalog  # noqa: E402
from fileserver.core import FileCore  # noqa: E402
from fileserver.enrolment import Enrolments  # noqa: E402
from fileserver.metrics import Metrics  # noqa: E402
from fileserver.gate import Gate  # noqa: E402
from fileserver.provision import ProvisionTracker  # noqa: E402
from fileserver.resource import FileResource, Policy, make_site  # noqa: E402
from fileserver.service import FileService  # noqa: E402
from fileserver.store import Store  # noqa: E402
from services.messages import encode_json  # noqa: E402
from services.mqtt import Incoming  # noqa: E402
from services.runner import Context  # noqa: E402
from services import settings as s  # noqa: E402
from services.topics import Topics  # noqa: E402

T0 = 1_800_000_000.0
UA = "Grandstream Model HW GRP2614 SW 1.0.0.31"
BATCH = 64  # phones per commit, about a read batch's worth


class Bus:
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.handlers: dict[str, Callable[[Incoming], Any]] = {}

    def subscribe(self, topic: str, handler: Callable[[Incoming], Any], **_: Any) -> None:
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: bytes, retain: bool = False, **_: Any) -> None:
        self.sent.append((topic, payload))

    def on_connect(self, _: Any) -> None:
        pass

    def on_disconnect(self, _: Any) -> None:
        pass

    def when_subscribed(self) -> Deferred:
        return Deferred()  # the keeper's check never runs: not what is measured


def config(mac: str) -> bytes:
    text = "<gs_provision>" + f"P270=Alice {mac}\n" * 300 + "</gs_provision>\n"
    body = text.encode()
    return encode_json({
        "files": [{"name": f"cfg{mac}.xml", "content_type": "application/xml", "content": text,
                   "encoding": "utf-8", "sha256": hashlib.sha256(body).hexdigest(),
                   "size": len(body)}],
        "revision": 1, "template": "grandstream/grp26xx", "mac": mac, "vendor": "grandstream",
        "model": "GRP2614", "notify_path": f"cfg{mac}.xml",
        "auth": {"user": mac, "password": f"pw-{mac}", "previous": None},
        "enrol": {"assignment": "a" * 64, "rearm": ""}})


def discovered(mac: str, ip: str) -> bytes:
    return encode_json({"mac": mac, "ip": ip, "port": 5060, "vendor": "grandstream",
                        "model": "GRP2614", "firmware": "1.0.0.31", "at": "2026-12-07T05:00:00.000Z",
                        "user_agent": "Grandstream GRP2614 1.0.0.31", "boot": "x" * 16})


def digest(challenge: bytes, mac: str, password: str, uri: str) -> str:
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge.decode()))
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{mac}:{fields['realm']}:{password}"), md5(f"GET:{uri}")
    response = md5(f"{ha1}:{fields['nonce']}:00000001:0a4f113b:auth:{ha2}")
    return (f'Digest username="{mac}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", opaque="{fields["opaque"]}", qop=auth, '
            f'nc=00000001, cnonce="0a4f113b", algorithm=MD5')


class Rig:
    def __init__(self, directory: Path) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = Bus()
        settings = s.resolve(s.COMMON + s.CONTRACT, {"data_dir": str(directory), "instance": "bench"},
                             environ={})
        self.ctx = Context(name="fileserver", settings=settings, bus=self.bus,  # type: ignore[arg-type]
                           topics=Topics("pnp"), reactor=self.clock, started_at="")
        self.store = Store(directory / "fileserver.db", clock=self.clock)
        self.core = FileCore(Catalog("s" * 32, "http://files.example/"), ProvisionTracker(), set(),
                             Enrolments(3 * 86400.0), "bench", self.ctx.counters)
        self.service = FileService(self.ctx, self.core, self.store, NotFoundLimiter(20, 60, 300),
                                   Metrics()).start()
        self.topics = self.ctx.topics
        gate = Gate(self.core.enrolments, self.core.tracker, True)
        self.root = FileResource(self.core.catalog, Policy(gate=gate), self.service.limiter,
                                 self.service.metrics, self.service.fetched, self.clock,
                                 self.service.health, self.service.gauges)
        self.site = make_site(self.root)

    def get(self, path: str, ip: str, authorization: str = "", site: Any = None) -> bytes:
        """One request on a new connection (phones close theirs), through the real channel."""
        channel = (site or self.site).buildProtocol(IPv4Address("TCP", ip, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        channel.makeConnection(transport)
        head = f"GET {path} HTTP/1.1\r\nHost: files.example\r\nUser-Agent: {UA}\r\n"
        if authorization:
            head += f"Authorization: {authorization}\r\n"
        channel.dataReceived((head + "Connection: close\r\n\r\n").encode())
        channel.connectionLost(None)
        return transport.value()

    def deliver(self, mac: str, kind: str, raw: bytes) -> None:
        self.bus.handlers[self.topics.devices(kind)](
            Incoming(self.topics.device(mac, kind), raw, False))

    def turn(self) -> None:
        self.clock.advance(0)  # the store's commit and the keeper's marker, as a reactor turn


def macs(start: int, n: int) -> list[str]:
    return [f"000b82{i:06x}" for i in range(start, start + n)]


def per_phone(label: str, rig: Rig, phones: list[str], step: Callable[[str], Any],
              results: dict[str, list[float]]) -> None:
    t = time.process_time()
    for i, mac in enumerate(phones):
        step(mac)
        if i % BATCH == BATCH - 1:
            rig.turn()
    rig.turn()
    results.setdefault(label, []).append((time.process_time() - t) / len(phones) * 1e6)


def run(n: int, start: int, results: dict[str, list[float]], http: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        phones = macs(start, n)
        ip = {mac: f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i, mac in enumerate(phones)}
        cfg = {mac: config(mac) for mac in phones}
        disc = {mac: discovered(mac, ip[mac]) for mac in phones}
        others = macs(start + 10_000_000, n)
        disc_other = {mac: discovered(mac, "10.9.9.9") for mac in others}
        per_phone("discovered, not ours (first boot's discovery)", rig, others,
                  lambda mac: rig.deliver(mac, "discovered", disc_other[mac]), results)
        sent = len(rig.bus.sent)
        per_phone("config, first (decode, store, published/files/enrolment)", rig, phones,
                  lambda mac: rig.deliver(mac, "config", cfg[mac]), results)
        echoes = rig.bus.sent[sent:]
        per_phone("config, the same again (a replay)", rig, phones,
                  lambda mac: rig.deliver(mac, "config", cfg[mac]), results)
        t = time.process_time()
        for topic, payload in echoes:
            info = rig.topics.parse(topic)
            assert info is not None
            rig.bus.handlers[rig.topics.devices(info.kind or "")](Incoming(topic, payload, False))
        results.setdefault("echo of our published+files+enrolment", []).append(
            (time.process_time() - t) / n * 1e6)
        sent = len(rig.bus.sent)
        per_phone("discovered, first (becomes the candidate)", rig, phones,
                  lambda mac: rig.deliver(mac, "discovered", disc[mac]), results)
        per_phone("discovered, again (same address, nothing changes)", rig, phones,
                  lambda mac: rig.deliver(mac, "discovered", disc[mac]), results)
        if http:
            run_http(rig, phones, ip, results)
            rig.service.stop()
            rig.store.close()
            return
        devices = rig.core.catalog.devices
        main = {mac: devices[mac].files[f"cfg{mac}.xml"] for mac in phones}
        per_phone("download, bootstrap 200 (MQTT side only)", rig, phones,
                  lambda mac: rig.service.fetched(devices[mac], main[mac], 200, ip[mac],
                                                  "ua", "bootstrap"), results)
        per_phone("download, credentialed 200 (MQTT side only)", rig, phones,
                  lambda mac: rig.service.fetched(devices[mac], main[mac], 200, ip[mac],
                                                  "ua", "device"), results)
        rig.service.stop()
        rig.store.close()


def run_http(rig: Rig, phones: list[str], ip: dict[str, str],
             results: dict[str, list[float]]) -> None:
    """A phone's three requests after its NOTIFY: the bootstrap download, the credentialed
    URL's 401 challenge, the credentialed download; each on a new connection, whole (channel,
    resource, checks, and the MQTT side's fetched and enrolment moves)."""
    catalog = rig.core.catalog
    challenges: dict[str, bytes] = {}

    def bootstrap(mac: str) -> None:
        out = rig.get(f"/p/{catalog.token(mac)}/cfg{mac}.xml", ip[mac])
        assert out.startswith(b"HTTP/1.1 200"), out[:200]

    def challenge(mac: str) -> None:
        out = rig.get(f"/c/cfg{mac}.xml", ip[mac])
        assert out.startswith(b"HTTP/1.1 401"), out[:200]
        challenges[mac] = out.partition(b"WWW-Authenticate: ")[2].partition(b"\r\n")[0]

    answers: dict[str, str] = {}

    def credentialed(mac: str) -> None:
        out = rig.get(f"/c/cfg{mac}.xml", ip[mac], answers[mac])
        assert out.startswith(b"HTTP/1.1 200"), out[:200]

    # the reference: the same bytes from a bare twisted.web leaf on a plain Site, through the
    # same in-memory connection (what Twisted alone costs per download)
    bare_site = server.Site(Bare(catalog.devices[phones[0]].files[f"cfg{phones[0]}.xml"].body))
    bare_site.noisy = False
    bare_site.log = lambda request: None  # type: ignore[method-assign]
    per_phone("HTTP: bare twisted.web 200 (reference, no access log)", rig, phones,
              lambda mac: rig.get(f"/cfg{mac}.xml", ip[mac], site=bare_site), results)
    per_phone("HTTP: bootstrap 200, whole", rig, phones, bootstrap, results)
    per_phone("HTTP: credentialed 401 challenge, whole", rig, phones, challenge, results)
    for mac in phones:  # the phone's work, not measured
        answers[mac] = digest(challenges[mac], mac, f"pw-{mac}", f"/c/cfg{mac}.xml")
    per_phone("HTTP: credentialed 200, whole", rig, phones, credentialed, results)
    # what bench/fileserver_bench.py measures over sockets: a provisioned phone's download
    per_phone("HTTP: credentialed 200 again (provisioned), whole", rig, phones, credentialed, results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--http", action="store_true",
                    help="the HTTP side instead: a phone's three requests through the real channel")
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for r in range(args.repeat):
        run(args.phones, r * args.phones, results, args.http)
    print(f"CPU per phone, microseconds: best (median) of {args.repeat} runs of {args.phones} phones")
    for label, values in results.items():
        values.sort()
        print(f"{values[0]:8.1f} ({values[len(values) // 2]:6.1f})  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
