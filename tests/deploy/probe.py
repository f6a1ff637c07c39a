"""MQTT checks run inside the engine's network namespace (`nsenter`), where the broker's
published port is: `python -m tests.deploy.probe retained|acl HOST PORT JSON`. Prints JSON.

fetch: {"urls": [...]} -> {url: "<status> <sha256 of the body>"}.
retained: {"user": ..., "password": ..., "filters": [...]} -> {topic: payload} of every retained
message those filters match.
acl: {"passwords": {user: password}} -> a list of findings (empty when every login may do exactly
what deploy/mosquitto/acl gives it): anonymous and wrong passwords refused; each user's QoS 1
publish on every kind of topic accepted or refused (PUBACK 135) as the ACL says; each user's
retained reads under pnp/# exactly the kinds it may read.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.test_deploy_broker import NOT_AUTHORIZED, READERS, WRITERS, Client, kind_of

# the quiet time after which every retained message has arrived (they come right after SUBACK)
SETTLE = 1.5


def retained(host: str, port: int, user: str, password: str, filters: list[str]) -> dict[str, str]:
    got: dict[str, str] = {}
    lock = threading.Lock()
    last = [time.monotonic()]
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            raise SystemExit(f"{user} refused: {reason}")
        c.subscribe([(f, 1) for f in filters])

    def on_subscribe(*_: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:
            with lock:
                got[msg.topic] = msg.payload.decode(errors="replace")
                last[0] = time.monotonic()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(host, port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise SystemExit(f"{user}: no SUBACK")
        while time.monotonic() - last[0] < SETTLE:
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def acl(host: str, port: int, passwords: dict[str, str]) -> list[str]:
    broker = SimpleNamespace(host=host, port=port, passwords=passwords)
    findings = []
    for user, password in ((None, None), ("pbx", "not-the-password"), ("nobody", "x")):
        c = Client(broker, user, password)
        if c.accepted:
            findings.append(f"login {user!r} with a wrong or no password was accepted")
        c.close()
    for user in READERS:
        c = Client(broker, user)
        if not c.accepted:
            findings.append(f"{user} cannot log in with its password from .env")
            continue
        for topic, writers in WRITERS.items():
            # a MAC no simulated phone has, and a payload every service refuses as invalid
            code = c.publish(topic, b'{"acl-probe": true}', retain=False)
            if user in writers and code not in (0, 16):
                findings.append(f"{user} may publish {topic} but got PUBACK {code}")
            if user not in writers and code != NOT_AUTHORIZED:
                findings.append(f"{user} publishing {topic}: PUBACK {code}, not {NOT_AUTHORIZED}")
        c.close()
    seen = {user: {kind_of(t) for t in retained(host, port, user, passwords[user], ["pnp/#"])}
            for user in READERS}
    existing = set().union(*seen.values())
    for user, kinds in seen.items():
        expected = {k for k in existing if k in READERS[user]}
        if kinds != expected:
            findings.append(f"{user} read {sorted(kinds)} of the retained kinds; the ACL gives it "
                            f"{sorted(expected)}")
    if "config" not in existing:
        findings.append("no retained config to check the reads against")
    return findings


def fetch(urls: list[Any]) -> dict[str, str]:
    """url -> "<status> <sha256 of the body>"; an entry ``[url, user, password]`` is fetched with
    those credentials (HTTP Digest: a provisioned device's own)."""
    out = {}
    for entry in urls:
        url = entry if isinstance(entry, str) else entry[0]
        # straight to the fileserver, whatever proxy the environment names
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if not isinstance(entry, str):
            manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            manager.add_password(None, url, entry[1], entry[2])
            handlers.append(urllib.request.HTTPDigestAuthHandler(manager))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(url, timeout=10) as r:
                out[url] = f"{r.status} {hashlib.sha256(r.read()).hexdigest()}"
        except urllib.error.HTTPError as exc:
            out[url] = f"{exc.code} -"
    return out


def main() -> None:
    command, host, port, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    if command == "retained":
        out: Any = retained(host, port, args["user"], args["password"], args["filters"])
    elif command == "fetch":
        out = fetch(args["urls"])
    elif command == "acl":
        out = acl(host, port, args["passwords"])
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
