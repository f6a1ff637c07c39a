"""``pnp health`` against a real mosquitto: what a container's healthcheck sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.broker import free_port
from services.messages import now_iso

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "pnp/services/generator/box1"


def health(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", "health", "generator", "--instance", "box1",
                           "--mqtt-url", url, "--timeout", "2", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def status(state: str = "online", health: str = "ok", **extra: object) -> dict:
    return {"state": state, "health": health, "version": "0.1.0", "started_at": now_iso(),
            "at": now_iso(), "counters": {}, **extra}


def test_an_online_service_is_healthy(broker, probe) -> None:
    probe.publish(TOPIC, status(), retain=True)
    done = health(broker.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "generator healthy"


def test_offline_degraded_and_missing_are_unhealthy_with_the_reason(broker, probe) -> None:
    done = health(broker.url)
    assert done.returncode == 1
    assert f"no status on {TOPIC} within 2s" in done.stderr
    probe.publish(TOPIC, status("offline"), retain=True)
    done = health(broker.url)
    assert done.returncode == 1 and "state is 'offline'" in done.stderr
    probe.publish(TOPIC, status(health="degraded", reasons={"store": "database not writable"}), retain=True)
    done = health(broker.url)
    assert done.returncode == 1 and "degraded: database not writable" in done.stderr
    probe.publish(TOPIC, b"not json", retain=True)
    done = health(broker.url)
    assert done.returncode == 1 and "is not a status" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_broker_is_unhealthy_at_once_with_why() -> None:
    done = health(f"mqtt://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "cannot reach the broker" in done.stderr and "Connection refused" in done.stderr
