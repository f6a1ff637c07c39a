"""Every operator command works with no settings at all: the documented defaults (broker
mqtt://127.0.0.1:1883) go through the same parsing as a flag would.

The default port is the machine's shared broker outside a namespace, so the test re-runs itself
under ``unshare -n`` (NETWORK-SAFETY.md rule 3), where port 1883 on loopback is the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services import settings as s
from services.broker import Mosquitto

INSIDE = os.environ.get("PNP_TEST_DEFAULTS_NETNS") == "1"
ROOT = Path(__file__).resolve().parent.parent
MAC = "000b82f55284"


def test_the_default_broker_url_is_parsed_like_a_flag():
    got = s.resolve([s.MQTT_URL], {}, environ={}).mqtt_url
    flagged = s.resolve([s.MQTT_URL], {"mqtt_url": "mqtt://127.0.0.1:1883"}, environ={}).mqtt_url
    assert (got.host, got.port, got.username) == (flagged.host, flagged.port, flagged.username)


def test_commands_with_an_empty_environment_in_a_network_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip to make a network namespace (CI has them)")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here")
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(Path(__file__)), "-k", "inside"],
        cwd=ROOT, env={**os.environ, "PNP_TEST_DEFAULTS_NETNS": "1"}, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")
def test_inside_readme_commands_without_settings(tmp_path):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    broker = Mosquitto(tmp_path / "broker", port=1883).start()
    # what a user's shell has: no PNP_* variable at all
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    pnp = [sys.executable, "-m", "tools.cli"]
    try:
        done = subprocess.run(pnp + ["assign", "--mac", MAC, "--sip-server", "pbx.example.com",
                                     "--user-id", "1001", "--password", "s3cret"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        done = subprocess.run(pnp + ["devices", "--json"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert MAC in done.stdout
        done = subprocess.run(pnp + ["monitor", "--help"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # no service runs here: unhealthy, saying so on the default broker, no traceback
        done = subprocess.run(pnp + ["health", "generator", "--timeout", "1"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "no status on pnp/services/generator/" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        broker.stop()
