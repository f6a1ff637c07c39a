"""An attacker on the phones' LAN against enrolment (issue 13, items 1-3, the race, NAT).

The whole system as `pnp up` runs it, in a network namespace of the test's own (NETWORK-SAFETY.md
rule 3: only ``lo`` exists, so port 5060 and the multicast group are ours and nothing leaves the
host). Real phones are `pnp simulate` phones on their own loopback addresses; they follow the
config server and HTTP credentials their file sets, with Digest, as the firmware would. The
attacker sits on 127.0.0.66: it sends SUBSCRIBEs in a phone's exact shape for a MAC it knows
(a MAC is printed on the box and in the phone's SUBSCRIBEs, which every host on the LAN sees),
answers the NOTIFYs it gets, copies the phone's User-Agent, and reads every NOTIFY on the
segment (a packet capture on ``lo``: a NOTIFY is cleartext UDP).

Items 4-8 of the issue have their own tests (docs/SECURITY.md, Tests).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from services.broker import Mosquitto
from services.sip.message import Request, Response, build_response, new_branch, parse
from tests.support import Probe, loopback_multicast, rerun_in_network_namespace, wait_until
from tools.simulate.fleet import plan
from tools.simulate.phone import authorization
from tools.simulate.staging import assignment
from tools.simulate.vendors import GROUP, Dialog, Identity, file_names

INSIDE = os.environ.get("PNP_TEST_ATTACK_ENROL_NETNS") == "1"
SERVICES = ("listener", "generator", "fileserver", "notifier")
ATTACKER = "127.0.0.66"
BASE = "http://127.0.0.1:8080/"  # PNP_PUBLIC_URL, as the site sets it
SIP = (GROUP, 5060)
# what the attacker waits for a NOTIFY after its SUBSCRIBE's answer: the notifier sends one
# within milliseconds of the discovery (docs/NOTIFIER.md), so a second is generous
NOTIFY_WAIT = 1.5


def test_attacks_on_enrolment_in_a_network_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, "inside", "PNP_TEST_ATTACK_ENROL_NETNS", timeout=300)


inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


# --- the attacker's tools ------------------------------------------------------------------------


class Sniffer:
    """Every NOTIFY on ``lo`` with a URL body, as (destination IP, URL): what a host that sees the
    segment's traffic reads (a switch's mirror port, a hub, Wi-Fi, ARP spoofing)."""

    ETH_P_ALL = 0x0003
    PACKET_OUTGOING = 4

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self.ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if where[2] == self.PACKET_OUTGOING:
                continue  # lo shows each packet twice: leaving and arriving
            ip = frame[14:]
            if len(ip) < 28 or ip[9] != socket.IPPROTO_UDP:
                continue
            payload = ip[(ip[0] & 0x0F) * 4 + 8:]
            if not payload.startswith(b"NOTIFY ") or b"application/url" not in payload:
                continue
            body = payload.partition(b"\r\n\r\n")[2].strip()
            with self._lock:
                self.seen.append((socket.inet_ntoa(ip[16:20]), body.decode("utf-8", "replace")))

    def urls_to(self, address: str) -> list[str]:
        with self._lock:
            return [url for to, url in self.seen if to == address]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@dataclass
class Heard:
    answer: int | None  # the status of the SUBSCRIBE's answer
    url: str | None  # the body of the NOTIFY it got, if any


class Attacker:
    """A host that claims to be a phone: SUBSCRIBEs in the phone's shape for a MAC it names, from
    its own address, with a Contact of its own; answers 200 to any NOTIFY and keeps the URL."""

    def __init__(self, address: str = ATTACKER) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.sock.bind((address, 0))
        self.port = self.sock.getsockname()[1]
        self.rng = random.Random()  # a new Call-ID each time: an old one is not a new boot

    def subscribe(self, victim: Identity, wait: float = NOTIFY_WAIT) -> Heard:
        me = Identity(victim.vendor, victim.model, victim.firmware, victim.mac, self.address, self.port)
        dialog = Dialog(f"{self.rng.getrandbits(40)}@{self.address}", str(self.rng.getrandbits(30)), 1)
        request = victim.vendor.subscribe(me, dialog, 0, new_branch())
        self.sock.sendto(request.to_bytes(), SIP)
        heard = Heard(None, None)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and heard.url is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                break
            message = parse(data)
            if isinstance(message, Response) and message.call_id == dialog.call_id:
                heard.answer = message.status
            elif isinstance(message, Request) and message.method == "NOTIFY":
                answer = build_response(message, 200, "OK", to_tag="atk", received=source)
                self.sock.sendto(answer.to_bytes(), source)
                heard.url = message.body.decode("utf-8", "replace").strip()
        return heard

    def drain(self) -> list[str]:
        """The URLs of NOTIFYs that arrived unasked since the last look."""
        urls = []
        self.sock.setblocking(False)
        try:
            while True:
                data, _ = self.sock.recvfrom(65535)
                message = parse(data)
                if isinstance(message, Request) and message.method == "NOTIFY":
                    urls.append(message.body.decode("utf-8", "replace").strip())
        except BlockingIOError:
            return urls
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Got:
    status: int
    body: bytes
    challenge: str = ""


def get(url: str, source: str, user_agent: str = "", login: tuple[str, str] | None = None) -> Got:
    """GET ``url`` from ``source`` (its TCP connection leaves from that address); with ``login``,
    answer a Digest challenge with it, as a phone answers its config server."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": user_agent} if user_agent else {}
    for _ in range(2):
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5,
                                          source_address=(source, 0))
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            got = Got(response.status, response.read(), response.getheader("WWW-Authenticate") or "")
        finally:
            conn.close()
        if got.status != 401 or login is None or "Authorization" in headers or not got.challenge:
            return got
        answer = authorization(got.challenge, url, *login)
        if answer is None:
            return got
        headers["Authorization"] = answer
    return got


# --- the site ------------------------------------------------------------------------------------


class Site:
    """A broker of the test's own and `pnp up` against it, with a probe that sees every topic."""

    def __init__(self, directory: Path) -> None:
        loopback_multicast()
        self.directory = directory
        self.broker = Mosquitto(directory / "broker", port=1883, persistence=False).start()
        self.env = {**os.environ, "PNP_MQTT_URL": self.broker.url, "PNP_DATA_DIR": str(directory),
                    "PNP_INSTANCE": "attack", "PNP_STATUS_INTERVAL": "1", "PNP_LOG_FORMAT": "json",
                    "PNP_HTTP_PORT": "8080", "PNP_PUBLIC_URL": BASE,
                    # a real phone takes longer than 30 s to reboot; these ones reboot at once
                    "PNP_DISCOVERY_WINDOW": "1"}
        self.log = open(directory / "up.log", "wb")
        self.up = subprocess.Popen([sys.executable, "-m", "tools.cli", "up"], env=self.env,
                                   stdout=self.log, stderr=subprocess.STDOUT)
        self.probe = Probe(self.broker.url, "pnp/#")
        wait_until(self.all_online, timeout=30)
        self.sniffer = Sniffer()

    def all_online(self) -> bool:
        return all((self.probe.last(f"pnp/services/{name}/attack") or {}).get("state") == "online"
                   for name in SERVICES)

    def last(self, mac: str, kind: str) -> Any:
        return self.probe.last(f"pnp/devices/{mac}/{kind}")

    def simulate(self, ident: Identity, *args: str) -> subprocess.Popen:
        """One real phone booting (`pnp simulate`), at its own address and port."""
        return subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "simulate", "--json", "--quiet", "--count", "1",
             "--models", ident.model, "--address-start", ident.ip,
             "--mac-start", str(int(ident.mac[6:], 16)), "--phone-port", str(ident.port), *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def assign(self, ident: Identity, index: int) -> int:
        """Pre-stage ``ident`` as a PBX does (one retained publish); its config's revision once
        the fileserver publishes its files."""
        self.probe.publish(f"pnp/devices/{ident.mac}/assignment", assignment(ident, index), retain=True)
        published = wait_until(lambda: self.last(ident.mac, "published"), timeout=15)
        return int(published["revision"])

    def rearm(self, mac: str) -> None:
        """The operator's command, waiting for the new epoch to be enrolling."""
        done = subprocess.run([sys.executable, "-m", "tools.cli", "assign", "--rearm", mac,
                               "--wait", "15"], env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def close(self) -> None:
        self.sniffer.close()
        self.probe.close()
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(15)
            except subprocess.TimeoutExpired:
                self.up.kill()
        self.broker.stop()
        self.log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    yield s
    s.close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    a = Attacker()
    yield a
    a.close()


def report(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"simulate printed no report (exit {proc.returncode}): {err[-3000:]}")


def provisioned(proc: subprocess.Popen) -> dict:
    """The phone's line of a run that must provision it."""
    r = report(proc)
    (phone,) = r["phones"]
    assert proc.returncode == 0 and phone["state"] == "provisioned", json.dumps(r, indent=1)[:3000]
    return phone


def file_url(url: str, ident: Identity) -> str:
    """The file a NOTIFY's URL names: a directory URL gets the vendor's first file name, as the
    phone appends it."""
    return url + file_names(ident.vendor, ident.mac, ident.model)[0] if url.endswith("/") else url


def user_agent(ident: Identity) -> str:
    return ident.vendor.user_agent(ident)


def main_file(mac: str, site: Site) -> str:
    return site.last(mac, "config")["files"][0]["name"]


def credentialed(url: str, name: str) -> str:
    """The credentialed URL of file ``name`` on the server of bootstrap ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/c/{name}"


def login(site: Site, mac: str) -> tuple[str, str]:
    auth = site.last(mac, "config")["auth"]
    return auth["user"], auth["password"]


# --- the cases -----------------------------------------------------------------------------------

# One provisioned pair of phones, shared by the cases that need a phone after enrolment.
FLEET_START = 0x100


@pytest.fixture(scope="module")
def fleet(site: Site) -> list[Identity]:
    idents = plan(2, ["GRP2614", "T46S"], "127.0.0.2", FLEET_START)
    procs = [site.simulate(ident, "--assign") for ident in idents]
    for proc in procs:
        provisioned(proc)
    for ident in idents:
        wait_until(lambda: (site.last(ident.mac, "enrolment") or {}).get("state") == "provisioned",
                   timeout=10)
        # provisioned by the download with the device's own login, as the phone's file told it
        assert site.last(ident.mac, "fetched")["auth"] == "device"
    return idents


@inside
def test_inside_a_forged_subscribe_for_a_provisioned_phone_gets_the_answer_and_nothing_else(
        site: Site, fleet: list[Identity], attacker: Attacker):
    phone = fleet[0]
    # The URL its NOTIFY carried, read off the wire: the bootstrap URL of its (closed) epoch.
    (url,) = {file_url(u, phone) for u in site.sniffer.urls_to(phone.ip)}
    before = site.last(phone.mac, "enrolment")
    assert before["bound"] == phone.ip

    heard = attacker.subscribe(phone)
    assert heard.answer == 200 and heard.url is None  # item 1: its 200 OK, no NOTIFY
    # The URL is dead for everyone, whatever User-Agent, from the attacker's address or the phone's.
    for source in (ATTACKER, phone.ip):
        got = get(url, source, user_agent(phone))
        assert got.status == 403, (source, got)
    # Item 2: the forged discovery re-pins nothing and raises nothing: the device is what it was.
    wait_until(lambda: site.last(phone.mac, "discovered")["ip"] == ATTACKER, timeout=5)
    time.sleep(0.3)
    after = site.last(phone.mac, "enrolment")
    assert (after["state"], after["bound"], after["epoch"]) == ("provisioned", phone.ip, before["epoch"])
    assert not site.last(phone.mac, "error")
    # ... and the real phone still downloads its file, from its config server, with its login.
    got = get(credentialed(url, main_file(phone.mac, site)), phone.ip, user_agent(phone),
              login(site, phone.mac))
    assert got.status == 200 and login(site, phone.mac)[1].encode() in got.body


@inside
def test_inside_after_enrolment_no_url_alone_gives_a_file_and_a_login_opens_only_its_own(
        site: Site, fleet: list[Identity]):
    phone, other = fleet
    url = site.sniffer.urls_to(phone.ip)[0]
    mine = credentialed(url, main_file(phone.mac, site))
    # Item 4: no credentials, a challenge and nothing else.
    got = get(mine, ATTACKER, user_agent(phone))
    assert got.status == 401 and got.challenge.startswith("Digest")
    # Another device's login (a phone of the same site, or an attacker who enrolled a MAC of its
    # own) does not open this one's file; nor does this MAC with that password.
    other_user, other_password = login(site, other.mac)
    got = get(mine, ATTACKER, user_agent(phone), (other_user, other_password))
    assert got.status == 404, got  # valid for its own files only
    for guess in ((phone.mac, other_password), (phone.mac, ""), (phone.mac.upper(), login(site, phone.mac)[1][:-1])):
        got = get(mine, ATTACKER, user_agent(phone), guess)
        assert got.status == 401, (guess[0], got)
    # Every bootstrap URL of the site is dead after enrolment.
    for ident in fleet:
        for url in site.sniffer.urls_to(ident.ip):
            assert get(file_url(url, ident), ATTACKER, user_agent(ident)).status == 403
    # What the test can see work: the phone's own login opens its own file.
    assert get(mine, phone.ip, user_agent(phone), login(site, phone.mac)).status == 200


@inside
def test_inside_race_attacker_first_conflict_then_rearm_provisions_the_phone(
        site: Site, attacker: Attacker):
    (phone,) = plan(1, ["GRP2614"], "127.0.0.4", 0x200)
    site.assign(phone, 0)
    stolen_password = login(site, phone.mac)[1]

    # The attacker claims the pre-staged MAC before its phone boots: first come, first served
    # (docs/SECURITY.md, "What remains possible").
    heard = attacker.subscribe(phone)
    assert heard.answer == 200 and heard.url
    stolen = file_url(heard.url, phone)
    got = get(stolen, ATTACKER, user_agent(phone))
    assert got.status == 200 and stolen_password.encode() in got.body

    # The real phone boots: conflict. It gets its 200 OK and no URL; the error names both.
    held = report(site.simulate(phone, "--notify-timeout", "2", "--timeout", "10"))
    assert held["phones"][0]["state"] == "failed" and held["phones"][0]["step"] == "notify", held
    error = wait_until(lambda: site.last(phone.mac, "error"), timeout=5)
    assert (error["service"], error["code"]) == ("fileserver", "conflict")
    assert set(error["addresses"]) == {ATTACKER, phone.ip}
    assert ATTACKER in error["message"] and phone.ip in error["message"] and "--rearm" in error["message"]
    # the notifier held the epoch's URL from the second address (its status counters)
    wait_until(lambda: (site.probe.last("pnp/services/notifier/attack") or {}).get(
        "counters", {}).get("held_second_address", 0) >= 1, timeout=5)
    enrolment = site.last(phone.mac, "enrolment")
    assert enrolment["state"] == "conflict" and set(enrolment["addresses"]) == {ATTACKER, phone.ip}
    assert site.last(phone.mac, "published")["enrolling"] is False
    # Nothing more for the attacker: not the file again, not another NOTIFY.
    assert get(stolen, ATTACKER, user_agent(phone)).status == 403
    assert attacker.subscribe(phone).url is None

    # The operator re-arms: a new epoch, the credential in the attacker's copy dies at once.
    epoch = enrolment["epoch"]
    site.rearm(phone.mac)
    wait_until(lambda: (site.last(phone.mac, "enrolment") or {}).get("epoch", 0) > epoch, timeout=10)
    wait_until(lambda: not site.last(phone.mac, "error"), timeout=5)
    assert login(site, phone.mac)[1] != stolen_password
    # The new epoch's URL does not go to the last discovery (the attacker's, above).
    time.sleep(0.5)
    assert attacker.drain() == []
    # The phone boots again and is provisioned (its second download with its new login).
    provisioned(site.simulate(phone))
    enrolment = wait_until(lambda: (lambda e: e if e and e["state"] == "provisioned" else None)(
        site.last(phone.mac, "enrolment")), timeout=10)
    assert enrolment["bound"] == phone.ip
    # The attacker's credential from the old file, and its old URL: refused.
    file = credentialed(heard.url, main_file(phone.mac, site))
    assert get(file, ATTACKER, user_agent(phone), (phone.mac, stolen_password)).status == 401
    # (its token was the old epoch's: no such path any more)
    assert get(stolen, ATTACKER, user_agent(phone)).status in (403, 404)
    assert get(file, phone.ip, user_agent(phone), login(site, phone.mac)).status == 200


@inside
def test_inside_phones_behind_one_address_enrol_and_a_walker_there_cannot_ban_them(site: Site):
    nat = "127.0.0.9"
    grp, yealink = plan(1, ["GRP2614"], nat, 0x300)[0], plan(1, ["T46S"], nat, 0x301)[0]
    assert grp.port != yealink.port  # one address, two phones: a NAT's two mappings
    # Someone behind the same address walks the fileserver for MACs until it is refused.
    statuses = [get(f"{BASE}p/{n:032x}/cfg000b82{n:06x}.xml", nat).status for n in range(40)]
    assert statuses[0] == 404 and statuses[-1] == 429, statuses
    # Both phones enrol from that address: a valid path for an enrolling device, and then valid
    # credentials, are never refused by the limiter.
    procs = [site.simulate(ident, "--assign") for ident in (grp, yealink)]
    for proc in procs:
        provisioned(proc)
    for ident in (grp, yealink):
        enrolment = wait_until(lambda: (lambda e: e if e and e["state"] == "provisioned" else None)(
            site.last(ident.mac, "enrolment")), timeout=10)
        assert enrolment["bound"] == nat and not site.last(ident.mac, "error")
    # The walker is still refused what it guesses.
    assert get(f"{BASE}p/{0:032x}/cfg000b82ffffff.xml", nat).status == 429

