"""Issue 11, item 4: the broker is a cache that can lose its last seconds.

A real mosquitto with ``autosave_interval 30`` (the compose broker's persistence) and `pnp up`
against it, inside a network namespace of the test's own (NETWORK-SAFETY.md rule 3). Devices
are assigned, the broker saves (a clean restart), more are assigned, then the broker is killed
with SIGKILL and started again from its save: the last assignments, configs and publications
are gone from it. Nothing may be lost for the phones: every device is still listed and served
with the same bytes, the services put back what they own, the lost assignments are reported,
and a new phone is provisioned. An explicit empty assignment still unassigns.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from twisted.internet import defer

from generator import main as generator_main
from generator.engine import Engine, Publish, Unpublish
from generator.render import Renderer
from generator.store import Store
from services.broker import Mosquitto
from services.retained import Keeper, hex128
from tests.support import BrokerCase, Probe, eventually, make_settings, rerun_in_network_namespace, wait_until

INSIDE = os.environ.get("PNP_TEST_CACHE_NETNS") == "1"
SERVICES = ("listener", "generator", "fileserver", "notifier")
SAVED = [f"000b82ca{i:04x}" for i in range(6)]  # assigned before the broker's save
LOST = [f"000b82cb{i:04x}" for i in range(4)]  # assigned after it: the crash loses them
# The compose broker's autosave interval. As root, mosquitto drops to user `mosquitto` unless
# told otherwise, and then cannot write its save here (issue 11, item 1: not this test's subject).
KEEP_SAVES = "autosave_interval 30" + ("\nuser root" if os.geteuid() == 0 else "")
ACCOUNT = {"sip_server": "pbx.example.com", "password": "cache-secret"}


def assignment(mac: str) -> dict:
    return {"accounts": [{**ACCOUNT, "user_id": str(int(mac[-4:], 16) + 100)}],
            "vendor": "grandstream", "model": "GRP2614"}


def test_explicit_empty_assignment_still_unassigns(tmp_path):
    """The engine takes only an empty payload for an unassignment."""
    engine = Engine(Renderer(None), Store(tmp_path / "generator.db"))
    engine.ready = True
    mac = SAVED[0]
    raw = json.dumps(assignment(mac)).encode()
    assert any(isinstance(e, Publish) for e in engine.assignment(mac, raw, json.loads(raw), None))
    assert engine.assigned() == [mac]
    assert engine.assignment(mac, b"", None, None)[0] == Unpublish(mac)
    assert engine.assigned() == []


class KeeperTest(BrokerCase):
    """The keeper alone on a real broker: what it puts back, and that it puts back nothing
    when nothing was lost."""

    # autosave_interval 30: between our restarts the broker saves only when stopped cleanly
    persistence = True
    broker_config = KEEP_SAVES
    probe_topics = None

    @defer.inlineCallbacks
    def start(self):
        settings = make_settings(self.broker, self.mktemp())
        keeper: list[Keeper] = []

        class OnlyKeeper:
            """A service that only keeps its own retained messages."""

            def __init__(self, ctx):
                keeper.append(Keeper(ctx, ctx.topics.devices("notify")))

            def start(self):
                keeper[0].start()
                return self

            def stop(self):
                keeper[0].stop()

            def counters(self):
                return {}

        def start(ctx):
            return OnlyKeeper(ctx).start()

        rt = yield self.start_service("notifier", settings, start)
        yield eventually(lambda: keeper[0].checked)
        return rt, keeper[0]

    def put(self, rt, keeper, mac, payload):
        topic = f"pnp/devices/{mac}/notify"
        rt.bus.publish(topic, payload, retain=True)
        keeper.put(topic, payload)

    def marked(self, keeper) -> defer.Deferred:
        """Until the broker holds the keeper's marker for what it has now."""
        probe = Probe(self.broker.url, keeper.topic)
        self.addCleanup(probe.close)
        return eventually(lambda: (probe.last(keeper.topic) or {}).get("digest") == hex128(keeper.digest),
                          timeout=5)

    def held(self) -> dict:
        probe = Probe(self.broker.url, "pnp/devices/#")
        try:
            probe.publish("pnp/devices/000000000000/echo", b"end")
            wait_until(lambda: probe.on("pnp/devices/000000000000/echo"))
            return {t: p for t, p, r in probe.messages if r}
        finally:
            probe.close()

    @defer.inlineCallbacks
    def test_puts_back_what_a_broker_restarted_from_an_older_save_lost(self):
        rt, keeper = yield self.start()
        self.put(rt, keeper, "000b82000001", b'{"status": "sent"}')
        self.put(rt, keeper, "000b82000002", b'{"status": "accepted"}')
        yield self.marked(keeper)
        connects = rt.bus.counters["mqtt_connects"]
        self.broker.stop()  # a clean stop saves
        self.broker.start()
        yield eventually(lambda: rt.bus.counters["mqtt_connects"] > connects and keeper.checked, timeout=10)
        self.assertEqual(rt.ctx.counters["retained_restored"], 0)  # nothing lost: nothing sent again
        # Newer than the save: one changed, one new, then the broker dies without saving.
        self.put(rt, keeper, "000b82000002", b'{"status": "timeout"}')
        self.put(rt, keeper, "000b82000003", b'{"status": "sent"}')
        yield self.marked(keeper)
        connects = rt.bus.counters["mqtt_connects"]
        self.broker.kill()
        self.broker.start()
        yield eventually(lambda: rt.bus.counters["mqtt_connects"] > connects and keeper.checked, timeout=10)
        self.assertEqual(rt.ctx.counters["retained_restored"], 2)
        held = self.held()
        self.assertEqual(held["pnp/devices/000b82000001/notify"], b'{"status": "sent"}')
        self.assertEqual(held["pnp/devices/000b82000002/notify"], b'{"status": "timeout"}')
        self.assertEqual(held["pnp/devices/000b82000003/notify"], b'{"status": "sent"}')


class GeneratorRestartTest(BrokerCase):
    """A generator that was away while the broker lost messages: it tells an assignment the
    broker lost (kept, its config put back) from one cleared meanwhile (its config withdrawn)."""

    def setUp(self):
        super().setUp()
        self.data_dir = Path(self.mktemp())

    @defer.inlineCallbacks
    def start(self):
        settings = make_settings(self.broker, self.data_dir, extra=generator_main.SETTINGS,
                                 generator_settle="0.05")
        rt = yield self.start_service("generator", settings, generator_main.start)
        yield eventually(lambda: rt.component.engine.ready and rt.component.keeper.checked)
        return rt

    @defer.inlineCallbacks
    def test_lost_assignment_kept_and_cleared_one_withdrawn(self):
        kept, cleared, lost = SAVED[0], SAVED[1], SAVED[2]
        rt = yield self.start()
        for mac in (kept, cleared, lost):
            self.probe.publish(f"pnp/devices/{mac}/assignment", assignment(mac), retain=True)
        yield eventually(lambda: all(self.probe.last(f"pnp/devices/{m}/config") for m in (kept, cleared, lost)))
        config = self.probe.on(f"pnp/devices/{lost}/config")[-1]
        yield rt.stop()
        # While the generator is away: one assignment is cleared (an empty payload), and the
        # broker loses another together with its config (as a restart from an older save does).
        self.probe.publish(f"pnp/devices/{cleared}/assignment", b"", retain=True)
        for kind in ("assignment", "config"):
            self.probe.publish(f"pnp/devices/{lost}/{kind}", b"", retain=True)
        rt = yield self.start()
        yield eventually(lambda: self.probe.on(f"pnp/devices/{lost}/config")[-1] == config)
        yield eventually(lambda: self.probe.on(f"pnp/devices/{cleared}/config")[-1] == b"")
        self.assertEqual(rt.ctx.counters["assignments_lost"], 1)
        self.assertEqual(rt.component.lost, {lost})
        self.assertEqual(rt.component.engine.assigned(), sorted([kept, lost]))
        # The assigning system publishes it again: no longer lost, same bytes, same revision.
        self.probe.publish(f"pnp/devices/{lost}/assignment", assignment(lost), retain=True)
        yield eventually(lambda: not rt.component.lost)
        self.assertEqual(self.probe.on(f"pnp/devices/{lost}/config")[-1], config)


def test_broker_crash_loses_nothing_in_a_network_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, "inside", "PNP_TEST_CACHE_NETNS", timeout=300)


# --- inside the namespace ----------------------------------------------------------------------

inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


def status(probe: Probe, service: str) -> dict:
    return probe.last(f"pnp/services/{service}/cache") or {}


def counter(probe: Probe, service: str, name: str) -> int:
    return (status(probe, service).get("counters") or {}).get(name, 0)


def retained(url: str, topics: list[str]) -> dict[str, bytes]:
    """What the broker holds retained on these topics, read by a fresh client."""
    probe = Probe(url, "pnp/devices/#")
    try:
        wait_until(lambda: len({t for t, _, r in probe.messages if r}) >= 1, timeout=5)
        # the replay ends with the echo of a message of our own behind it
        probe.publish("pnp/devices/000000000000/echo", b"end")
        wait_until(lambda: probe.on("pnp/devices/000000000000/echo"), timeout=5)
        return {t: p for t, p, r in probe.messages if r and t in topics and p}
    finally:
        probe.close()


def download(url: str, mac: str) -> bytes:
    request = urllib.request.Request(
        url, headers={"User-Agent": f"Grandstream Model HW GRP2614 SW 1.0.0.31 DevId {mac}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def pnp(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@inside
def test_inside_broker_killed_after_its_save_loses_nothing(tmp_path):
    for command in ("ip link set lo up", "ip link set lo multicast on",
                    "ip route replace 224.0.0.0/4 dev lo"):
        subprocess.run(command.split(), check=True)
    broker = Mosquitto(tmp_path / "broker", port=1883, persistence=True,
                       extra_config=KEEP_SAVES).start()
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PNP_DATA_DIR": str(tmp_path),
           "PNP_INSTANCE": "cache", "PNP_STATUS_INTERVAL": "1"}
    log_path = tmp_path / "up.log"
    log = open(log_path, "wb")
    up = subprocess.Popen([sys.executable, "-m", "tools.cli", "up"], env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    probe = Probe(broker.url, "pnp/#")
    try:
        wait_until(lambda: all(status(probe, s).get("state") == "online" for s in SERVICES), timeout=30)

        def assign(macs: list[str]) -> None:
            batch = tmp_path / f"batch-{macs[0]}.json"
            batch.write_text(json.dumps({mac: assignment(mac) for mac in macs}))
            done = pnp(env, "assign", "--file", str(batch))
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: all(probe.last(f"pnp/devices/{m}/published") for m in macs), timeout=20)

        assign(SAVED)
        # The broker saves (a clean stop writes mosquitto.db) and comes back; the services
        # reconnect. Its next autosave is 30 s away: what follows is only in its memory.
        connects = counter(probe, "generator", "mqtt_connects")
        broker.stop()
        broker.start()
        wait_until(lambda: counter(probe, "generator", "mqtt_connects") > connects
                   and counter(probe, "fileserver", "mqtt_connects") > connects, timeout=20)
        assign(LOST)
        # The saved broker came back with everything: nothing was put back.
        assert all(counter(probe, s, "retained_restored") == 0 for s in SERVICES)
        before = {m: probe.last(f"pnp/devices/{m}/published") for m in SAVED + LOST}
        sha = {m: before[m]["files"][0]["sha256"] for m in before}

        broker.kill()  # SIGKILL: no save
        broker.start()
        # The fault happened: the broker came back without the last assignments.
        held = retained(broker.url, [f"pnp/devices/{m}/assignment" for m in SAVED + LOST])
        assert not any(f"pnp/devices/{m}/assignment" in held for m in LOST), sorted(held)

        # Lost assignments are reported, not taken for unassignments...
        wait_until(lambda: counter(probe, "generator", "assignments_lost") == len(LOST), timeout=20)
        # ...and the generator and fileserver put back their config, published and files.
        wait_until(lambda: counter(probe, "generator", "retained_restored") >= len(LOST)
                   and counter(probe, "fileserver", "retained_restored") >= len(LOST), timeout=20)
        wanted = [f"pnp/devices/{m}/{k}" for m in SAVED + LOST for k in ("config", "published", "files")]
        wait_until(lambda: len(retained(broker.url, wanted)) == len(wanted), timeout=20)
        lines = log_path.read_text(errors="replace")
        assert f"the broker lost {len(LOST)} assignments" in lines, lines[-3000:]

        # Every device is still listed, and its URL serves the same bytes.
        listed = pnp(env, "devices", "--json")
        assert listed.returncode == 0, listed.stderr
        devices = {d["mac"]: d for d in json.loads(listed.stdout)}
        assert set(SAVED + LOST) <= set(devices), sorted(devices)
        assert all(devices[m]["stage"] == "published" for m in SAVED + LOST), devices
        for mac in SAVED + LOST:
            body = download(before[mac]["files"][0]["url"], mac)
            assert hashlib.sha256(body).hexdigest() == sha[mac]

        # A new phone is provisioned through the recovered system.
        fleet = subprocess.run(
            [sys.executable, "-m", "tools.cli", "simulate", "--json", "--quiet", "--count", "1",
             "--models", "GRP2614", "--assign", "--address-start", "127.0.9.2", "--mac-start",
             "9000", "--sip-port", "5060"], env=env, capture_output=True, text=True, timeout=90)
        report = json.loads(fleet.stdout)
        assert fleet.returncode == 0 and not report.get("failures"), fleet.stdout[-3000:]
        assert [p["state"] for p in report["phones"]] == ["provisioned"]

        # An explicit empty assignment still unassigns, lost or not.
        gone = LOST[0]
        url = before[gone]["files"][0]["url"]
        done = pnp(env, "assign", "--mac", gone, "--unassign")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: probe.on(f"pnp/devices/{gone}/published")[-1] == b"", timeout=10)
        with pytest.raises(urllib.error.HTTPError) as refused:
            download(url, gone)
        assert refused.value.code == 404
    finally:
        probe.close()
        if up.poll() is None:
            up.terminate()
            try:
                up.wait(15)
            except subprocess.TimeoutExpired:
                up.kill()
        broker.stop()
        log.close()
