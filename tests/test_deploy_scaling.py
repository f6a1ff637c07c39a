"""Past one machine (docs/SCALING.md): two notifiers and two fileservers on one broker, each its
own `pnp` process with its own broker login, under the repository's ACL.

The fileservers share PNP_FILE_SECRET and PNP_PUBLIC_URL (the load balancer's address), so
either can answer any phone. Phones are UDP sockets on 127.0.0.x that answer NOTIFYs 200 and
count them; discoveries and configs are published with the listener's and the generator's
logins, as those services would.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from tools import brokersetup
from services.broker import free_port
from services.messages import Config, ConfigFile, Enrol, HttpAuth, now_iso
from services.sip.message import build_response, parse
from tests.test_deploy_broker import PNP, Client, LockedBroker, wait_for
from tests.test_fileserver_enrol import digest as digest_answer

PHONES = 8
INSTANCES = ("a", "b")


class Phones:
    """PHONES phones on 127.0.0.2 upwards: each answers every NOTIFY 200 and records it."""

    def __init__(self, count: int) -> None:
        self.sockets: dict[str, socket.socket] = {}
        self.received: dict[str, list[Any]] = {}
        # where each NOTIFY came from: each notifier sends from a socket of its own
        self.senders: dict[str, list[tuple[str, int]]] = {}
        self._selector = selectors.DefaultSelector()
        for i in range(count):
            ip = f"127.0.0.{i + 2}"
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            s.setblocking(False)
            self.sockets[ip] = s
            self.received[ip] = []
            self.senders[ip] = []
            self._selector.register(s, selectors.EVENT_READ, ip)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def address(self, ip: str) -> tuple[str, int]:
        return self.sockets[ip].getsockname()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.05):
                data, addr = key.fileobj.recvfrom(65535)
                request = parse(data)
                self.received[key.data].append(request)
                self.senders[key.data].append(addr)
                answer = build_response(request, 200, "OK", to_tag="phonetag", received=addr)
                key.fileobj.sendto(answer.to_bytes(), addr)

    def transactions(self, ip: str) -> set[str]:
        """Distinct NOTIFY transactions (Via branch): a retransmission is not a second NOTIFY."""
        return {r.headers.get("Via").split("branch=")[1].split(";")[0]
                for r in list(self.received[ip]) if getattr(r, "method", None) == "NOTIFY"}

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for s in self.sockets.values():
            s.close()


def mac_of(i: int) -> str:
    return f"000b82f5{i:04x}"


def discovered(mac: str, address: tuple[str, int]) -> dict[str, Any]:
    ip, port = address
    call_id = f"{mac}-boot1@{ip}"
    return {
        "mac": mac, "vendor": "Grandstream", "model": "GRP2614", "firmware": "1.0.0.31",
        "ip": ip, "port": port, "contact": f"<sip:{ip}:{port}>",
        "user_agent": "Grandstream GRP2614 1.0.0.31", "call_id": call_id,
        "from_tag": "phone1", "to_tag": "ours1", "seen_at": now_iso(), "cseq": 20000,
        "request_uri": f"sip:MAC%3A{mac.upper()}@224.0.1.75",
        "from_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>;tag=phone1",
        "to_uri": f"<sip:MAC%3A{mac.upper()}@224.0.1.75>",
        "event": {"profile-type": "device", "vendor": "Grandstream"}, "interface": "127.0.0.1",
        "boot": 1, "v": 1,
    }


def config(mac: str, padding: int = 0) -> tuple[bytes, str]:
    comment = f"<!-- {'x' * padding} -->" if padding else ""
    body = f'<?xml version="1.0"?><gs_provision version="1">{comment}<mac>{mac}</mac></gs_provision>\n'.encode()
    digest = hashlib.sha256(body).hexdigest()
    payload = Config(files=[ConfigFile(name=f"cfg{mac}.xml", content_type="application/xml",
                                       content=body.decode(), encoding="utf-8", sha256=digest,
                                       size=len(body))],
                     revision=1, template="test", mac=mac, vendor="grandstream", model="GRP2614",
                     auth=HttpAuth(user=mac, password=password_of(mac)),
                     enrol=Enrol(assignment="0" * 16))
    return payload.to_json(), digest


def password_of(mac: str) -> str:
    return f"http-password-of-{mac}"


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The scaled-out site, run once: configs, then boots; then everything settles."""
    root = tmp_path_factory.mktemp("scaling")
    passwords = {u: brokersetup.new_secret() for u in ("listener", "generator", "fileserver", "notifier", "audit")}
    broker = LockedBroker(root / "broker", passwords).start()
    secret = brokersetup.new_secret()
    http_ports = {i: free_port() for i in INSTANCES}
    sip_port = free_port()
    base = {"PATH": os.environ.get("PATH", ""), "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "1"}
    url = lambda user: f"mqtt://{user}:{passwords[user]}@127.0.0.1:{broker.port}"  # noqa: E731
    envs: dict[str, dict[str, str]] = {}
    for i in INSTANCES:
        envs[f"fileserver-{i}"] = {
            **base, "PNP_MQTT_URL": url("fileserver"), "PNP_INSTANCE": i,
            "PNP_DATA_DIR": str(root / f"fileserver-{i}"), "PNP_HTTP_PORT": str(http_ports[i]),
            "PNP_HTTP_BIND": "127.0.0.1", "PNP_FILE_SECRET": secret,
            # the load balancer's address; here, the first instance
            "PNP_PUBLIC_URL": f"http://127.0.0.1:{http_ports['a']}/",
        }
        envs[f"notifier-{i}"] = {
            **base, "PNP_MQTT_URL": url("notifier"), "PNP_INSTANCE": i,
            "PNP_DATA_DIR": str(root / f"notifier-{i}"), "PNP_SIP_INTERFACE": "127.0.0.1",
            "PNP_SIP_PORT": str(sip_port),
            # each sends only for its MACs (crc32 mod 2), so each phone gets one NOTIFY
            "PNP_NOTIFIER_SHARD": f"{INSTANCES.index(i) + 1}/{len(INSTANCES)}",
        }
    procs = {name: subprocess.Popen([*PNP, name.split("-")[0]], env=env, stdout=(root / f"{name}.log").open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
             for name, env in envs.items()}
    phones = Phones(PHONES)
    clients: list[Client] = []
    try:
        for name, env in envs.items():
            service = name.split("-")[0]
            extra = ["--healthz"] if service == "fileserver" else []
            assert wait_for(lambda: subprocess.run(
                [*PNP, "health", service, "--timeout", "2", *extra], env=env, capture_output=True,
                timeout=20).returncode == 0 or procs[name].poll() is not None, timeout=20), name
            assert procs[name].poll() is None, (root / f"{name}.log").read_text()
        audit = Client(broker, "audit")
        audit.subscribe("pnp/#")
        generator, listener = Client(broker, "generator"), Client(broker, "listener")
        clients += [audit, generator, listener]
        macs = {mac_of(i): ip for i, ip in enumerate(phones.sockets)}
        digests = {}
        for mac in macs:
            payload, digests[mac] = config(mac)
            assert generator.publish(f"pnp/devices/{mac}/config", payload) in (0, 16)
        published = lambda: {t.split("/")[2] for t, p in audit.received if t.endswith("/published") and p}  # noqa: E731
        assert wait_for(lambda: published() >= set(macs), timeout=15)
        for mac, ip in macs.items():
            assert listener.publish(f"pnp/devices/{mac}/discovered",
                                    json.dumps(discovered(mac, phones.address(ip))).encode()) in (0, 16)
        assert wait_for(lambda: all(phones.transactions(ip) for ip in macs.values()), timeout=15)
        time.sleep(1.5)  # a second notifier's NOTIFY, if there is one, would be here by now
        yield {"macs": macs, "digests": digests, "phones": phones, "audit": audit,
               "http_ports": http_ports, "root": root}
    finally:
        for c in clients:
            c.close()
        phones.close()
        stop_all(list(procs.values()))
        broker.stop()


def fetch(site: dict[str, Any], mac: str, instance: str) -> bytes:
    """The device's file from one fileserver, as its phone gets it (from the phone's address):
    at the URL the published message gave while it enrols, then with its own credentials."""
    publications = [json.loads(p) for t, p in site["audit"].received
                    if t == f"pnp/devices/{mac}/published" and p]
    assert publications, f"{mac} was never published"
    name = publications[-1]["files"][0]["name"]
    path = "/" + publications[-1]["files"][0]["url"].split("/", 3)[3]
    port, ip = site["http_ports"][instance], site["macs"][mac]
    status, _, body = _get(ip, port, path)
    if status == 403:  # provisioned: its bootstrap URL is closed
        status, headers, _ = _get(ip, port, f"/c/{name}")
        assert status == 401, status
        status, _, body = _get(ip, port, f"/c/{name}", {"Authorization": digest_answer(
            headers["www-authenticate"], f"/c/{name}", mac, password_of(mac))})
    assert status == 200, (status, body)
    return body


def _get(source: str, port: int, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def provisioned_after(site: dict[str, Any], mac: str, count: int) -> bool:
    """Whether the count-th download of the device's file reported the phone provisioned."""
    topic = f"pnp/devices/{mac}/fetched"
    assert wait_for(lambda: sum(t == topic for t, _ in site["audit"].received) >= count)
    return [json.loads(p) for t, p in site["audit"].received if t == topic][count - 1]["provisioned"]


def test_phone_whose_fetches_stay_on_one_fileserver_is_provisioned(site):
    mac = sorted(site["macs"])[0]
    fetch(site, mac, "b")
    fetch(site, mac, "b")  # after its "reboot", through a load balancer with source-IP affinity
    assert provisioned_after(site, mac, 2)


def test_phone_whose_fetches_land_on_different_fileservers_is_provisioned(site):
    mac = sorted(site["macs"])[1]
    fetch(site, mac, "a")
    topic = f"pnp/devices/{mac}/fetched"
    assert wait_for(lambda: any(t == topic for t, _ in site["audit"].received))
    time.sleep(0.5)  # the phone flashes and reboots (tens of seconds for a real one)
    fetch(site, mac, "b")
    assert provisioned_after(site, mac, 2)


def test_every_file_is_served_by_both_fileservers(site):
    for mac in site["macs"]:
        for instance in INSTANCES:
            body = fetch(site, mac, instance)
            assert hashlib.sha256(body).hexdigest() == site["digests"][mac], f"{mac} from {instance}"


def test_each_phone_gets_one_notify_from_two_notifiers(site):
    """PNP_NOTIFIER_SHARD 1/2 and 2/2: every phone is notified, by one of them, once."""
    counts = {ip: len(site["phones"].transactions(ip)) for ip in site["macs"].values()}
    assert counts == {ip: 1 for ip in site["macs"].values()}, counts
    senders = {addr for ip in site["macs"].values() for addr in site["phones"].senders[ip]}
    assert len(senders) == 2, f"both notifiers share the phones, not one of them: {senders}"
