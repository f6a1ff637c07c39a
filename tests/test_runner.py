"""A service's life on a real broker: online with counters, offline on stop, offline by last will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from twisted.internet import defer, reactor

from services.runner import Runtime
from tests.support import BrokerCase, eventually, make_settings, wait_until


class Component:
    def __init__(self, ctx):
        self.ctx = ctx
        self.stopped = False
        ctx.counters["things"] += 3

    def start(self):
        return self

    def counters(self):
        return {"live": 7}

    def stop(self):
        self.stopped = True


def test_every_service_is_one_shape():
    """What the runner calls on every service's component, and what ``pnp`` reads from its
    main module."""
    import importlib

    from tools.cli import SERVICES
    from services.runner import Component

    for name, path in SERVICES.items():
        main = importlib.import_module(path)
        settings = importlib.import_module(f"{name}.settings")
        assert main.SETTINGS is settings.SETTINGS, name
        component = main.start.__annotations__["return"]
        assert issubclass(getattr(main, component), Component), name


class RuntimeTest(BrokerCase):
    @defer.inlineCallbacks
    def test_online_with_counters_then_offline_on_stop(self):
        settings = make_settings(self.broker, self.mktemp())
        rt = Runtime("generator", settings, lambda ctx: Component(ctx).start(), reactor)
        component = yield rt.start()
        topic = "pnp/services/generator/test"
        status = yield eventually(lambda: self.probe.last(topic))
        self.assertEqual(status["state"], "online")
        self.assertEqual(status["counters"]["things"], 3)
        self.assertEqual(status["counters"]["live"], 7)
        self.assertEqual(status["service"], "generator")
        self.assertTrue(status["started_at"].endswith("Z"))
        yield rt.stop()
        self.assertTrue(component.stopped)
        yield eventually(lambda: self.probe.last(topic)["state"] == "offline")

    @defer.inlineCallbacks
    def test_error_topic_is_retained_and_clears(self):
        settings = make_settings(self.broker, self.mktemp())
        rt = Runtime("generator", settings, Component, reactor)
        yield rt.start()
        self.addCleanup(rt.stop)
        rt.ctx.publish_error("000b82f55284", "schema", "accounts[0].user_id is required", "accounts[0].user_id")
        topic = "pnp/devices/000b82f55284/error"
        report = yield eventually(lambda: self.probe.last(topic))
        self.assertEqual(report["field"], "accounts[0].user_id")
        self.assertEqual(report["service"], "generator")
        rt.ctx.clear_error("000b82f55284")
        yield eventually(lambda: self.probe.on(topic)[-1] == b"")


def test_last_will_says_offline_when_the_process_dies(tmp_path, broker, probe):
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp_path),
           "PNP_INSTANCE": "victim"}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "generator"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        topic = "pnp/services/generator/victim"
        wait_until(lambda: (probe.last(topic) or {}).get("state") == "online", timeout=20)
        proc.kill()
        wait_until(lambda: probe.last(topic)["state"] == "offline", timeout=10)
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_stops_within_5s_and_says_offline(tmp_path, broker, probe):
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp_path),
           "PNP_INSTANCE": "polite"}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "notifier"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        topic = "pnp/services/notifier/polite"
        wait_until(lambda: (probe.last(topic) or {}).get("state") == "online", timeout=20)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - began < 5
        assert proc.returncode == 0
        wait_until(lambda: probe.last(topic)["state"] == "offline", timeout=3)
        # Not a terminal, so the log is JSON lines.
        lines = [l for l in proc.stdout.read().decode().splitlines() if l.strip()]
        assert lines and all(json.loads(l)["service"] == "notifier" for l in lines)
    finally:
        proc.kill()
        proc.wait()
