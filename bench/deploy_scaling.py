"""Numbers behind docs/SCALING.md, on the repository's locked-down broker (ACL, passwords).

1. Shared subscription: N live discoveries to two notifier logins sharing
   $share/notifiers/pnp/devices/+/discovered: per member, duplicates, messages/s.
2. Retained discoveries on joining a shared subscription: how many a new member gets replayed.
3. Retained replay: K configs (about 2.5 KB each) retained; how long a new fileserver login
   takes to receive them all.
4. A second real fileserver (`pnp fileserver`) started against those K configs: seconds until it
   serves the last device's file.

Usage: .venv/bin/python bench/deploy_scaling.py [--discoveries N] [--configs K]
Loopback only; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import brokersetup  # noqa: E402
from services.broker import free_port  # noqa: E402
from tests.test_deploy_broker import PNP, Client, LockedBroker, wait_for  # noqa: E402
from tests.test_deploy_scaling import config  # noqa: E402



def mac(i: int) -> str:
    return f"02{i:010x}"


def shared(broker: LockedBroker, n: int) -> None:
    group = "$share/notifiers/pnp/devices/+/discovered"
    a, b = Client(broker, "notifier"), Client(broker, "notifier")
    a.subscribe(group)
    b.subscribe(group)
    listener = Client(broker, "listener")
    start = time.perf_counter()
    for i in range(n):
        listener.client.publish(f"pnp/devices/{mac(i)}/discovered", b'{"boot": 1}', qos=1)
    wait_for(lambda: len(a.received) + len(b.received) >= n, timeout=120)
    elapsed = time.perf_counter() - start
    topics = [t for t, _ in a.received] + [t for t, _ in b.received]
    print(f"shared subscription, {n} live discoveries, 2 members: "
          f"{len(a.received)} + {len(b.received)}, duplicates {len(topics) - len(set(topics))}, "
          f"{n / elapsed:,.0f} msg/s end to end")
    # retained on joining
    listener.publish(f"pnp/devices/{mac(0)}/discovered", b'{"boot": 2}', retain=True)
    c = Client(broker, "notifier")
    c.subscribe(group)
    time.sleep(0.5)
    print(f"retained discoveries replayed to a member joining the group: {len(c.received)} of 1 "
          f"(mosquitto {mosquitto_version()}; brokers differ here)")
    listener.publish(f"pnp/devices/{mac(0)}/discovered", b"", retain=True)
    for x in (a, b, c, listener):
        x.close()


def mosquitto_version() -> str:
    from services.broker import find_mosquitto

    out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout
    return out.split("version ")[1].split()[0] if "version " in out else "?"


def config_of(i: int) -> bytes:
    """A device's config of about 2.5 KB, the size of a real one with a few accounts and keys."""
    return config(mac(i), padding=2000)[0]


def replay(broker: LockedBroker, k: int, root: Path) -> None:
    generator = Client(broker, "generator")
    size = len(config_of(0))
    for i in range(k):
        generator.client.publish(f"pnp/devices/{mac(i)}/config", config_of(i), qos=1, retain=True)
    generator.publish(f"pnp/devices/{mac(k - 1)}/config", config_of(k - 1))  # all acked by now
    start = time.perf_counter()
    reader = Client(broker, "fileserver")
    reader.subscribe("pnp/devices/+/config")
    wait_for(lambda: len(reader.received) >= k, timeout=120)
    elapsed = time.perf_counter() - start
    print(f"retained replay: {k} configs of {size} bytes to a new fileserver login in {elapsed:.2f} s "
          f"({k / elapsed:,.0f} msg/s)")
    reader.close()

    secret = brokersetup.new_secret()
    ports = {i: free_port() for i in "ab"}
    procs = []
    try:
        def start_fileserver(i: str) -> subprocess.Popen:
            env = {"PATH": os.environ.get("PATH", ""), "PNP_LOG_FORMAT": "text", "PNP_INSTANCE": i,
                   "PNP_MQTT_URL": f"mqtt://fileserver:{broker.passwords['fileserver']}@127.0.0.1:{broker.port}",
                   "PNP_DATA_DIR": str(root / f"fs-{i}"), "PNP_HTTP_PORT": str(ports[i]),
                   "PNP_HTTP_BIND": "127.0.0.1", "PNP_FILE_SECRET": secret,
                   "PNP_PUBLIC_URL": f"http://127.0.0.1:{ports['a']}/",
                   # the polling below would otherwise get this client refused for its 404s
                   "PNP_404_LIMIT": "1000000"}
            p = subprocess.Popen([*PNP, "fileserver"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(p)
            return p

        audit = Client(broker, "audit")
        audit.subscribe(f"pnp/devices/{mac(k - 1)}/published")
        start_fileserver("a")
        if not wait_for(lambda: any(p for _, p in audit.received), timeout=300):
            raise SystemExit("the first fileserver never published the last device")
        url = json.loads([p for _, p in audit.received if p][-1])["files"][0]["url"]
        audit.close()
        at_b = url.replace(f":{ports['a']}/", f":{ports['b']}/")
        start = time.perf_counter()
        start_fileserver("b")

        def serves() -> bool:
            try:
                with urllib.request.urlopen(at_b, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        if not wait_for(serves, timeout=300):
            raise SystemExit("the second fileserver never served the last device's file")
        print(f"second fileserver, empty database, {k} retained configs: serving the last device's "
              f"file {time.perf_counter() - start:.2f} s after its start")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
    generator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discoveries", type=int, default=5000)
    parser.add_argument("--configs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        passwords = {u: brokersetup.new_secret() for u in
                     ("listener", "generator", "fileserver", "notifier", "audit")}
        broker = LockedBroker(root / "broker", passwords).start()
        try:
            shared(broker, args.discoveries)
            replay(broker, args.configs, root)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
