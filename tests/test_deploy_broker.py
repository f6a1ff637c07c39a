"""The repository's broker config, password file and ACL, loaded into a real mosquitto.

Each user logs in with the password `pnp setup` generated and is checked against what it must
and must not do. "audit" is added to the test copy of the ACL only, to see what the broker let
through: a refused QoS 1 publish gets PUBACK 135 and must also reach nobody.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools import brokersetup
from services.broker import answers, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO_DIR = REPO / "deploy" / "mosquitto"
# the `pnp` command, from whichever environment runs the tests
PNP = [sys.executable, "-m", "tools.cli"]
MAC = "000b82f55284"
NOT_AUTHORIZED = 135

SERVICE_USERS = ("listener", "generator", "fileserver", "notifier")
# the console logs in as itself, assigns like the pbx and reads the configs (for its admins)
USERS = (*SERVICE_USERS, "console", "pbx", "operator")
STATUS = (*SERVICE_USERS, "console")


class LockedBroker:
    """mosquitto with the repository's mosquitto.conf and ACL; only the listener's port and the
    file paths are rewritten for a private copy."""

    def __init__(self, directory: Path, passwords: dict[str, str],
                 tls: tuple[Path, Path] | None = None, passwd: str | None = None) -> None:
        self.directory = directory
        self.passwords = dict(passwords)
        # the password file as `pnp setup` wrote it (else one made from ``passwords``)
        self.passwd = passwd
        self.port = free_port()
        # (certificate, key): also load conf.d/tls.conf.example, as docs/DEPLOY.md says to
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.process: subprocess.Popen | None = None

    def write(self) -> Path:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "data").mkdir(exist_ok=True)
        (d / "conf.d").mkdir(exist_ok=True)
        acl = (MOSQUITTO_DIR / "acl").read_text() + "\nuser audit\ntopic read #\n"
        (d / "acl").write_text(acl)
        (d / "passwd").write_text(self.passwd if self.passwd is not None
                                  else brokersetup.render_passwd(self.passwords))
        conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        replacements = {
            r"^listener 1883$": f"listener {self.port} 127.0.0.1",
            r"^password_file .*$": f"password_file {d / 'passwd'}",
            r"^acl_file .*$": f"acl_file {d / 'acl'}",
            r"^include_dir .*$": f"include_dir {d / 'conf.d'}",
            r"^persistence_location .*$": f"persistence_location {d / 'data'}/",
            r"^log_dest .*$": "log_dest stderr",
        }
        for pattern, new in replacements.items():
            conf, n = re.subn(pattern, new, conf, flags=re.M)
            assert n == 1, f"mosquitto.conf has no single line matching {pattern}"
        if self.tls:
            tls_conf = (MOSQUITTO_DIR / "conf.d" / "tls.conf.example").read_text()
            for pattern, new in {r"^listener 8883$": f"listener {self.tls_port} 127.0.0.1",
                                 r"^certfile .*$": f"certfile {self.tls[0]}",
                                 r"^keyfile .*$": f"keyfile {self.tls[1]}"}.items():
                tls_conf, n = re.subn(pattern, new, tls_conf, flags=re.M)
                assert n == 1, f"tls.conf.example has no single line matching {pattern}"
            (d / "conf.d" / "tls.conf").write_text(tls_conf)
        # Running as root, mosquitto would switch to the "mosquitto" user, who cannot read the
        # test's private directory.
        conf += "\nuser root\n"
        (d / "mosquitto.conf").write_text(conf)
        return d / "mosquitto.conf"

    def start(self) -> "LockedBroker":
        conf = self.write()
        # Its log goes to a file: a pipe nobody reads blocks mosquitto once it fills.
        log = self.directory / "mosquitto.log"
        with open(log, "wb") as out_file:
            self.process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=out_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                out = log.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"mosquitto did not start with the repository config: {out}")
            time.sleep(0.02)
        return self

    def url(self, user: str | None = None) -> str:
        auth = f"{user}:{self.passwords[user]}@" if user else ""
        return f"mqtt://{auth}127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def passwords_from_setup(root: Path) -> dict[str, str]:
    """Run `pnp setup` on a copy of the repository's .env.example; the users and passwords it
    put in .env (its password file is in root/deploy/mosquitto/passwd)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".env.example").write_text((REPO / ".env.example").read_text())
    result = subprocess.run([*PNP, "setup", "--dir", str(root)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return brokersetup.broker_users(brokersetup.read_env(root / ".env"))


class Client:
    """A blocking paho MQTT v5 client for one user."""

    def __init__(self, broker: LockedBroker, user: str | None, password: str | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.reason: Any = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user is not None:
            self.client.username_pw_set(user, broker.passwords.get(user) if password is None else password)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.suback = threading.Event()
        self.suback_reasons: list[Any] = []
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(getattr(broker, "host", "127.0.0.1"), broker.port)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        self.suback_reasons = list(reasons)
        self.suback.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = True) -> int:
        """The PUBACK's reason code (0 or 16 = accepted, 135 = not authorized)."""
        rc: list[int] = []
        done = threading.Event()

        def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            rc.append(reason.value)
            done.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(5), f"no PUBACK for {topic}"
        return rc[0]

    def subscribe(self, topic_filter: str) -> None:
        self.suback.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self.suback.wait(5)

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.received}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    passwords = passwords_from_setup(root / "checkout")
    passwords["audit"] = brokersetup.new_secret()
    # the very file `pnp setup` wrote, plus the test's own audit user
    passwd = (root / "checkout" / "deploy" / "mosquitto" / "passwd").read_text()
    passwd += brokersetup.render_passwd({"audit": passwords["audit"]})
    b = LockedBroker(root / "broker", passwords, passwd=passwd).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def audit(broker):
    c = Client(broker, "audit")
    c.subscribe("#")
    yield c
    c.close()


@pytest.fixture
def login(broker):
    made: list[Client] = []

    def login(user: str | None, password: str | None = None, **kw: Any) -> Client:
        c = Client(broker, user, password, **kw)
        made.append(c)
        return c

    yield login
    for c in made:
        c.close()


def wait_for(predicate: Any, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def settle(audit: Client, marker_user: Client, marker_topic: str) -> None:
    """Wait until everything published before now has reached the audit client: a marker
    published after it arrives last (one connection, QoS 1, in order)."""
    payload = os.urandom(8).hex().encode()
    assert marker_user.publish(marker_topic, payload, retain=False) in (0, 16)
    assert wait_for(lambda: (marker_topic, payload) in audit.received), "marker never arrived"


def test_setup_writes_a_password_per_service_and_other_systems():
    passwords = passwords_from_setup(Path(os.getcwd()) / "checkout")
    assert set(passwords) == set(USERS)
    assert len(set(passwords.values())) == len(passwords), "passwords must differ"
    assert all(len(p) >= 24 for p in passwords.values())


def test_mosquitto_passwd_and_pnp_setup_agree_on_the_hash(tmp_path):
    # mosquitto_passwd's own line verifies with ours ...
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "s3cret"], check=True,
                   capture_output=True)
    hashed = passwd.read_text().strip().split(":", 1)[1]
    assert brokersetup.verify_password("s3cret", hashed)
    assert not brokersetup.verify_password("s3cret!", hashed)
    # ... and ours has the same shape (logins with it are checked against mosquitto below).
    ours = brokersetup.hash_password("s3cret")
    assert ours.split("$")[:3] == hashed.split("$")[:3]


def test_anonymous_and_wrong_passwords_are_refused(login):
    assert not login(None).accepted
    assert not login("pbx", "not-the-password").accepted
    assert not login("nobody", "whatever").accepted
    for user in USERS:
        assert login(user).accepted, f"{user} cannot log in with the password pnp setup made"


# Every topic kind, with who must be able to write it (everyone else must be refused).
WRITERS = {
    f"pnp/devices/{MAC}/discovered": {"listener"},
    f"pnp/devices/{MAC}/assignment": {"pbx", "console"},
    "pnp/profiles/default": {"pbx", "console"},
    f"pnp/devices/{MAC}/config": {"generator"},
    f"pnp/devices/{MAC}/resync": {"generator"},
    f"pnp/devices/{MAC}/published": {"fileserver"},
    f"pnp/devices/{MAC}/files": {"fileserver"},
    f"pnp/devices/{MAC}/fetched": {"fileserver"},
    f"pnp/devices/{MAC}/notify": {"notifier"},
    f"pnp/devices/{MAC}/error": set(SERVICE_USERS),
    f"pnp/devices/{MAC}/enrolment": {"fileserver"},
    f"pnp/devices/{MAC}/rearm": {"pbx", "console"},
    f"pnp/devices/{MAC}/rotate": {"pbx", "console"},
    **{f"pnp/services/{svc}/host1": {svc} for svc in STATUS},
}

# What each user must be able to read (everything else must never reach it).
READERS = {
    "listener": {"discovered", "fetched", "error", "services/listener"},
    "generator": {"discovered", "assignment", "profiles", "config", "error", "rearm", "rotate",
                  "services/generator"},
    "fileserver": {"config", "discovered", "published", "files", "fetched", "error", "enrolment", "rearm",
                   "services/fileserver"},
    "notifier": {"discovered", "published", "fetched", "notify", "error", "resync", "enrolment",
                 "services/notifier"},
    "pbx": {"discovered", "assignment", "profiles", "files", "notify", "fetched", "error", "enrolment",
            "rearm", "rotate", *(f"services/{s}" for s in STATUS)},
    "operator": {"discovered", "files", "notify", "fetched", "error", "enrolment", "rearm", "rotate",
                 *(f"services/{s}" for s in STATUS)},
    "console": {"discovered", "assignment", "profiles", "config", "files", "notify", "fetched", "error",
                "enrolment", "rearm", "rotate", *(f"services/{s}" for s in STATUS)},
}


def kind_of(topic: str) -> str:
    parts = topic.split("/")
    if parts[1] == "devices":
        return parts[3]
    return "profiles" if parts[1] == "profiles" else f"services/{parts[2]}"


@pytest.mark.parametrize("user", USERS)
def test_each_user_may_write_only_its_own_topics(user, login, audit):
    client = login(user)
    writes = {}
    for topic, writers in WRITERS.items():
        payload = f'{{"by": "{user}", "n": "{os.urandom(4).hex()}"}}'.encode()
        writes[topic] = (payload, client.publish(topic, payload, retain=False))
    settle(audit, login("pbx"), "pnp/profiles/marker")
    for topic, writers in WRITERS.items():
        payload, code = writes[topic]
        arrived = (topic, payload) in audit.received
        if user in writers:
            assert code in (0, 16) and arrived, f"{user} must be able to publish {topic}"
        else:
            assert code == NOT_AUTHORIZED, f"{user} publishing {topic}: PUBACK {code}, not 135"
            assert not arrived, f"{user}'s publish on {topic} reached a subscriber"


def test_each_user_reads_only_what_it_needs(login, audit):
    # One retained message on every topic, each by its rightful writer.
    owners = {t: sorted(w)[0] for t, w in WRITERS.items()}
    clients = {u: login(u) for u in set(owners.values())}
    for topic, owner in owners.items():
        assert clients[owner].publish(topic, b'{"seeded": true}') in (0, 16)
    assert wait_for(lambda: set(WRITERS) <= audit.topics())
    for user, may_read in READERS.items():
        c = login(user)
        # The widest filters a client could try: everything, and every device topic.
        c.subscribe("pnp/#")
        c.subscribe(f"pnp/devices/{MAC}/config")
        c.subscribe(f"pnp/devices/{MAC}/resync")
        expected = {t for t in WRITERS if kind_of(t) in may_read}
        assert wait_for(lambda: expected <= c.topics()), \
            f"{user} misses {sorted(expected - c.topics())}"
        time.sleep(0.2)  # anything not allowed would have arrived by now with the rest
        assert c.topics() == expected, f"{user} read {sorted(c.topics() - expected)}"
    # and the rendered configs (SIP passwords) reach only the fileserver and the generator
    assert {u for u, r in READERS.items() if "config" in r} == {"generator", "fileserver", "console"}
    # and the credentials a challenged resync needs (account 1's password) only the notifier
    assert {u for u, r in READERS.items() if "resync" in r} == {"notifier"}
    # and the working download URLs (published) only the notifier, besides their writer
    assert {u for u, r in READERS.items() if "published" in r} == {"fileserver", "notifier"}
    # the enrolment state reaches everyone who watches a device, the commands the generator
    assert {u for u, r in READERS.items() if "enrolment" in r} >= {"notifier", "pbx", "operator", "console"}
    assert {u for u, r in READERS.items() if "rotate" in r} >= {"generator"}
    assert {u for u, r in READERS.items() if "rearm" in r} >= {"generator", "fileserver"}
    for topic in WRITERS:
        clients[owners[topic]].publish(topic, b"")  # clear the retained seeds


def test_the_pbx_re_arms_and_rotates_but_still_reads_no_credential(login, audit):
    """Issue 13: the PBX commands a re-arm or a rotation and watches the enrolment, and still
    never reads a config, a working URL or a resync credential; the operator commands nothing."""
    generator, fileserver, pbx, operator = login("generator"), login("fileserver"), login("pbx"), login("operator")
    generator.subscribe("pnp/devices/+/rearm")
    generator.subscribe("pnp/devices/+/rotate")
    for kind in ("config", "resync"):
        assert generator.publish(f"pnp/devices/{MAC}/{kind}", b'{"secret": "pw"}') in (0, 16)
    assert fileserver.publish(f"pnp/devices/{MAC}/published", b'{"url": "http://x/p/TOKEN/"}') in (0, 16)
    assert fileserver.publish(f"pnp/devices/{MAC}/enrolment", b'{"state": "conflict", "epoch": 2}') in (0, 16)
    pbx.subscribe("pnp/#")
    for kind in ("config", "published", "resync"):
        pbx.subscribe(f"pnp/devices/{MAC}/{kind}")
    assert wait_for(lambda: f"pnp/devices/{MAC}/enrolment" in pbx.topics())
    command = b'{"id": "5f0c3b", "at": "2026-12-07T03:00:00.000Z", "v": 1}'
    assert pbx.publish(f"pnp/devices/{MAC}/rearm", command) in (0, 16)
    assert pbx.publish(f"pnp/devices/{MAC}/rotate", command) in (0, 16)
    assert operator.publish(f"pnp/devices/{MAC}/rearm", b'{"id": "forged"}') == NOT_AUTHORIZED
    assert operator.publish(f"pnp/devices/{MAC}/rotate", b'{"id": "forged"}') == NOT_AUTHORIZED
    assert wait_for(lambda: {f"pnp/devices/{MAC}/rearm", f"pnp/devices/{MAC}/rotate"} <= generator.topics())
    settle(pbx, pbx, "pnp/profiles/marker")  # after everything retained the pbx was sent
    assert not {f"pnp/devices/{MAC}/{k}" for k in ("config", "published", "resync")} & pbx.topics()
    assert (f"pnp/devices/{MAC}/rearm", b'{"id": "forged"}') not in generator.received
    for client, kinds in ((generator, ("config", "resync")), (fileserver, ("published", "enrolment")),
                          (pbx, ("rearm", "rotate"))):
        for kind in kinds:
            client.publish(f"pnp/devices/{MAC}/{kind}", b"")


def test_a_service_last_will_is_delivered_on_its_own_status_topic_only(login, audit):
    status = "pnp/services/notifier/box7"
    will = b'{"state": "offline"}'
    c = login("notifier", will=(status, will))
    assert c.accepted
    c.client.socket().shutdown(socket.SHUT_RDWR)  # dies without DISCONNECT
    assert wait_for(lambda: (status, will) in audit.received)
    # a will on another service's topic is refused like any other publish
    forged = login("listener", will=("pnp/services/notifier/box7", b'{"state": "forged"}'))
    assert forged.accepted
    forged.client.socket().shutdown(socket.SHUT_RDWR)
    settle(audit, login("pbx"), "pnp/profiles/marker")
    assert (status, b'{"state": "forged"}') not in audit.received
    login("notifier").publish(status, b"")


def test_the_broker_healthcheck_login_reads_uptime(broker):
    result = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "operator",
         "-P", broker.passwords["operator"], "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"],
        capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and "seconds" in result.stdout, result.stderr


def test_shared_subscription_splits_discoveries_between_two_notifiers(login, broker):
    """What several notifiers would stand on (docs/SCALING.md): an MQTT v5 shared subscription
    hands each live discovery to exactly one member of the group, under the same ACL."""
    group = "$share/notifiers/pnp/devices/+/discovered"
    a, b = login("notifier"), login("notifier")
    a.subscribe(group)
    b.subscribe(group)
    spy = login("pbx")  # may read discoveries, but not through a share of config
    spy.subscribe("$share/notifiers/pnp/devices/+/config")
    listener, generator = login("listener"), login("generator")
    sent = [f"pnp/devices/0000000000{i:02x}/discovered" for i in range(60)]
    for topic in sent:
        assert listener.publish(topic, b"{}", retain=False) in (0, 16)
        generator.publish(topic.replace("discovered", "config"), b"{}", retain=False)
    assert wait_for(lambda: len(a.received) + len(b.received) >= len(sent))
    time.sleep(0.2)
    got_a, got_b = [t for t, _ in a.received], [t for t, _ in b.received]
    assert sorted(got_a + got_b) == sorted(sent), "each discovery exactly once across the group"
    assert got_a and got_b, "both members share the work"
    assert spy.received == []


def test_pnp_assign_wait_with_the_pbx_login_shows_the_published_answer(broker, login, audit):
    # Under the ACL the pbx login may not read config; --wait must still show an answer.
    mac = "000b82aa0042"
    url = f"mqtt://pbx:{broker.passwords['pbx']}@127.0.0.1:{broker.port}"
    proc = subprocess.Popen([*PNP, "assign", "--mac", mac, "--sip-server", "pbx.example.com",
                             "--user-id", "1042", "--password", "pw", "--wait", "10"],
                            env={**os.environ, "PNP_MQTT_URL": url},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        topic = f"pnp/devices/{mac}/assignment"
        assert wait_for(lambda: any(t == topic for t, _ in audit.received), timeout=10)
        fileserver = login("fileserver")
        # what the fileserver sends: the working URL (not for the pbx), then the files without it
        fileserver.publish(f"pnp/devices/{mac}/published",
                           b'{"url":"http://10.0.0.1/p/SECRETTOKEN/","files":[{"name":"cfg000b82aa0042.xml",'
                           b'"url":"http://10.0.0.1/p/SECRETTOKEN/cfg000b82aa0042.xml","sha256":"ab"}],'
                           b'"revision":1,"v":1}',
                           retain=False)
        fileserver.publish(f"pnp/devices/{mac}/files",
                           b'{"files":[{"name":"cfg000b82aa0042.xml","sha256":"ab","size":9}],'
                           b'"revision":1,"v":1}',
                           retain=False)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "published revision 1 (cfg000b82aa0042.xml)" in out
    assert "SECRETTOKEN" not in out
