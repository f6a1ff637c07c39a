"""What the tests share: a private mosquitto per test, settings pointing at it, and a probe
client that watches the broker from outside the service under test.

One harness, two runners: pytest tests take the ``broker`` and ``probe`` fixtures
(tests/conftest.py); trial tests (those that run the reactor) subclass :class:`BrokerCase`.
Both start the broker with :func:`start_broker` and watch it with :class:`Probe`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from services import settings as s
from services.broker import Mosquitto
from services.runner import Runtime


def start_broker(directory: Path | str, persistence: bool = False, extra_config: str = "") -> Mosquitto:
    """A fresh mosquitto on a free loopback port; nothing retained is shared with other tests."""
    return Mosquitto(Path(directory), persistence=persistence, extra_config=extra_config).start()


class BrokerCase(unittest.TestCase):
    """A trial test with its own broker (``self.broker``) and a probe on it (``self.probe``,
    subscribed to ``probe_topics``; None: no probe). Subclasses that set up more call
    ``super().setUp()`` first, so their cleanups run before the probe and broker stop."""

    persistence = False
    broker_config = ""  # extra mosquitto.conf lines
    probe_topics: str | list[str] | None = "pnp/#"

    def setUp(self) -> None:
        self.broker = start_broker(self.mktemp(), self.persistence, self.broker_config)
        self.addCleanup(self.broker.stop)
        if self.probe_topics is not None:
            self.probe = Probe(self.broker.url, self.probe_topics)
            self.addCleanup(self.probe.close)

    @defer.inlineCallbacks
    def start_service(self, name: str, settings: s.Settings, start: Callable[[Any], Any]) -> Any:
        """A service started as its main starts it, stopped when the test ends."""
        rt = Runtime(name, settings, start, reactor)
        self.addCleanup(rt.stop)
        yield rt.start()
        return rt


def make_settings(broker: Mosquitto, data_dir: Path | str, extra: list[s.Setting] | None = None,
                  **values: str) -> s.Settings:
    """Settings as a service would resolve them, pointed at ``broker``; ``values`` are raw
    strings keyed by setting name, as flags would give them."""
    definitions = s.COMMON + s.CONTRACT + (extra or [])
    flags = {"mqtt_url": broker.url, "data_dir": str(data_dir), "instance": "test",
             "status_interval": "30", **values}
    return s.resolve(definitions, flags, environ={})


class Probe:
    """A plain paho client on its own thread, recording everything it receives."""

    def __init__(self, url: str, topics: str | list[str] = "#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        topics = [topics] if isinstance(topics, str) else topics

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError("probe could not subscribe")

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[Any]:
        return [json.loads(p) if p else None for p in self.on(topic)]

    def last(self, topic: str) -> Any:
        found = self.json_on(topic)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Blocking wait (for pytest tests without a running reactor)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@defer.inlineCallbacks
def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Deferred wait (for trial tests, while the reactor runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        yield task.deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"condition not met within {timeout}s")


# NETWORK-SAFETY.md rule 3: inside a namespace of the test's own, multicast stays on lo.
LOOPBACK_MULTICAST = ["ip link set lo up", "ip link set lo multicast on",
                      "ip route replace 224.0.0.0/4 dev lo"]


def loopback_multicast() -> None:
    """Inside a fresh network namespace: lo up, with the multicast route on it. Refuses anywhere
    else (an inner test run by hand with its flag set, as root, on the host's network): it would
    move the host's multicast route (NETWORK-SAFETY.md)."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        raise RuntimeError(f"not in a network namespace of our own (interfaces {names}): "
                           "the multicast route stays as it is")
    for command in LOOPBACK_MULTICAST:
        subprocess.run(command.split(), check=True)


def rerun_in_network_namespace(test_file: Path | str, selector: str, flag: str,
                               timeout: float = 180, unshare: tuple[str, ...] = ("-n",)) -> None:
    """Re-run the tests ``selector`` (a ``-k`` expression) of ``test_file`` under ``unshare -n``
    (``unshare``: its options, e.g. ``-m`` too) with ``flag=1`` in their environment; skips
    where no namespace can be made (not root), and fails with their output unless every
    selected test passed."""
    import pytest

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip to make a network namespace (CI has them)")
    check = subprocess.run(["unshare", *unshare, "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {check.stderr.decode().strip()}")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        ["unshare", *unshare, sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(test_file), "-k", selector],
        cwd=root, env={**os.environ, flag: "1"}, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
