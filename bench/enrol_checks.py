"""What enrolment's checks cost per request, without sockets: the bootstrap gate, and the
credentialed URL's per-device Digest (parse + nonce check + MD5 response), against the lookup a
download did before (token -> device -> file); then the whole resource (FileResource.render with
a twisted DummyRequest: routing, checks, headers, body) on each kind of URL.

    .venv/bin/python bench/enrol_checks.py [--number 20000]

Prints microseconds per call (best of 5 runs of --number calls each).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from fileserver.abuse import NotFoundLimiter  # noqa: E402
from fileserver.auth import DeviceDigest  # noqa: E402
from fileserver.metrics import Metrics  # noqa: E402
from fileserver.resource import FileResource, Policy  # noqa: E402
from fileserver.catalog import Catalog  # noqa: E402
from fileserver.core import FileCore  # noqa: E402
from fileserver.enrolment import Enrolments  # noqa: E402
from fileserver.gate import Gate  # noqa: E402
from fileserver.provision import ProvisionTracker  # noqa: E402

MAC = "000b82f55284"
PASSWORD = "bench-device-password-0123456789ab"
CLIENT = "192.168.5.175"
T0 = 1_800_000_000.0


def config() -> dict:
    text = "<gs_provision>" + "P270=Alice\n" * 400 + "</gs_provision>\n"
    body = text.encode()
    return {"files": [{"name": f"cfg{MAC}.xml", "content_type": "application/xml", "content": text,
                       "encoding": "utf-8", "sha256": hashlib.sha256(body).hexdigest(),
                       "size": len(body)}],
            "revision": 1, "template": "grandstream/grp26xx", "mac": MAC, "vendor": "grandstream",
            "model": "GRP2614", "notify_path": "",
            "auth": {"user": MAC, "password": PASSWORD, "previous": "old-password"},
            "enrol": {"assignment": "a1", "rearm": ""}}


def answer(challenge: str, uri: str) -> bytes:
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{MAC}:{fields['realm']}:{PASSWORD}"), md5(f"GET:{uri}")
    response = md5(f"{ha1}:{fields['nonce']}:00000001:0a4f113b:auth:{ha2}")
    return (f'Digest username="{MAC}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", opaque="{fields["opaque"]}", qop=auth, '
            f'nc=00000001, cnonce="0a4f113b", algorithm=MD5').encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    core = FileCore(Catalog("s" * 32, "http://files.example/"), ProvisionTracker(), set(),
                    Enrolments(3 * 86400.0), "bench")
    core.config(MAC, config(), None, False, T0)
    core.discovered(MAC, CLIENT, T0 + 1)
    catalog = core.catalog
    device = catalog.devices[MAC]
    token = catalog.token(MAC)
    name = f"cfg{MAC}.xml"
    gate = Gate(core.enrolments, core.tracker, True)
    digest = DeviceDigest()
    uri = f"/c/{name}".encode()
    header = answer(digest.challenge(CLIENT), uri.decode())

    def lookup() -> object:
        found = catalog.by_token(token)
        return found.files.get(name) if found is not None else None

    def bootstrap() -> object:
        return gate.bootstrap(device, CLIENT, T0 + 2)

    def credentialed() -> bool:
        creds = digest.credentials(header, b"GET", uri, CLIENT)
        found = catalog.devices.get(digest.user(creds))
        return found is not None and digest.proves(creds, gate.passwords(found))

    class Clock:
        def seconds(self) -> float:
            return T0 + 2

    root = FileResource(catalog, Policy(gate=gate, digest=digest), NotFoundLimiter(20, 60, 300),
                        Metrics(), lambda *a: None, Clock(), dict, dict)

    def render(path: bytes, headers: dict[bytes, bytes]) -> int:
        request = DummyRequest(path.split(b"/")[1:])
        request.uri = request.path = path
        request.client = IPv4Address("TCP", CLIENT, 40000)
        for key, value in headers.items():
            request.requestHeaders.setRawHeaders(key, [value])
        root.render(request)
        return request.responseCode or 200

    bootstrap_path = f"/p/{token}/{name}".encode()
    assert render(bootstrap_path, {}) == 200
    assert render(uri, {b"authorization": header}) == 200
    rows = [("token -> device -> file (the lookup every download did before)", lookup),
            ("bootstrap gate (enrolling? candidate/bound?)", bootstrap),
            ("credentialed: Digest parse + nonce + MD5, device's passwords", credentialed),
            ("render, bootstrap URL (an enrolling device, its address)",
             lambda: render(bootstrap_path, {})),
            ("render, credentialed URL with a valid Digest",
             lambda: render(uri, {b"authorization": header}))]
    print(f"best of 5 runs of {args.number} calls, microseconds per call")
    for label, fn in rows:
        best = min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number * 1e6
        print(f"{best:8.2f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
