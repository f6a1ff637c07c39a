"""`pnp up`'s broker saves into RAM and `pnp up` copies each save to disk (services/brokersave.py):
what survives a crash of the broker, a crash of `pnp up`, a host reboot, an operator's restore
and a full disk, against real processes.

The outer tests re-run the inner ones under ``unshare -n -m`` (NETWORK-SAFETY.md rule 3; the
mount namespace for the small full tmpfs), with `pnp up` from tests/test_fault_broker.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from services import brokersave
from services.broker import answers
from services.brokersave import DB, REPLACED, SaveCore, claim, prepare, ram_dir_for
from tests.support import Probe, rerun_in_network_namespace, wait_until
from tests.test_fault_broker import URL, Up
from tests.test_fault_stores import fill
from tests.test_up import alive, children_of

FLAG = "PNP_TEST_BROKER_SAVE_NS"
INSIDE = os.environ.get(FLAG) == "1"


@pytest.mark.parametrize("inner", ["crash_of_pnp_up", "kill_9_of_the_broker", "clean_stop",
                                   "foreign_ram_dir", "full_disk"])
def test_broker_save_in_a_namespace(inner):
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, f"inside_{inner}", FLAG, timeout=240,
                               unshare=("-n", "-m", "--propagation", "private"))


inside = pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")


class Saving(Up):
    """`pnp up` with only the listener (the broker is what is under test), its RAM directory
    under ``ram_base``, and ways to look into both copies of the broker's database."""

    def __init__(self, directory: Path, ram_base: Path | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, services=("listener",))
        if ram_base is not None:
            ram_base.mkdir(exist_ok=True)
            self.up_env["PNP_BROKER_RAM_DIR"] = str(ram_base)
        self.ram = ram_dir_for(ram_base or brokersave.DEFAULT_BASE, directory)
        self.disk = directory / "broker"

    def on_disk(self, topic: str) -> bool:
        return _holds(self.disk / DB, topic)

    def in_ram(self, topic: str) -> bool:
        return _holds(self.ram / DB, topic)

    def retain(self, topic: str) -> None:
        self.probe.publish(topic, b"x" * 8000, retain=True)

    def retained(self) -> set[str]:
        """The retained topics under pnp/t/ as a fresh subscriber gets them."""
        wait_until(lambda: answers("127.0.0.1", 1883), timeout=10)
        probe = Probe(URL, ["pnp/t/#", "pnp/t-sync"])
        try:
            # the broker sends what is retained at the subscription, before later messages
            probe.publish("pnp/t-sync", b"sync")
            wait_until(lambda: probe.on("pnp/t-sync"), timeout=10)
            return {t for t, _, retain in list(probe.messages) if retain and t.startswith("pnp/t/")}
        finally:
            probe.close()

    def crash(self) -> None:
        """kill -9 of `pnp up`: its broker gets SIGTERM from the kernel and saves into RAM."""
        everything = set(children_of(self.proc.pid))
        self.probe.close()
        self.proc.kill()
        self.proc.wait()
        wait_until(lambda: not any(alive(p) for p in everything), timeout=15)


def _holds(path: Path, topic: str) -> bool:
    try:
        return topic.encode() in path.read_bytes()
    except FileNotFoundError:
        return False


@pytest.fixture
def saving(tmp_path):
    system = Saving(tmp_path / "data", tmp_path / "ram")
    yield system
    system.close()


@inside
def test_inside_crash_of_pnp_up(saving, tmp_path):
    """kill -9 of `pnp up` -> the next one starts from the RAM copy; an operator's restore while
    it was away wins over that copy; a reboot (RAM gone) starts from the disk copy."""
    saving.start()
    saving.retain("pnp/t/a")
    wait_until(lambda: saving.on_disk("pnp/t/a"), timeout=20, interval=0.1)
    backup = tmp_path / "backup.db"
    shutil.copy(saving.disk / DB, backup)
    # Just after a copy, so the next autosave (5 s) is still to come: b is only in the broker's
    # memory, and in RAM once the broker saves on the SIGTERM the kernel sends it.
    saving.retain("pnp/t/b")
    saving.crash()
    assert saving.in_ram("pnp/t/b")
    assert not saving.on_disk("pnp/t/b"), "an autosave came between: the test proves nothing"

    saving.start()
    assert saving.retained() == {"pnp/t/a", "pnp/t/b"}
    assert "starts from its RAM copy" in saving.log()
    wait_until(lambda: saving.on_disk("pnp/t/b"), timeout=10, interval=0.1)  # copied at once

    # Crashed again, and the operator restores the backup (only a) before the next start.
    saving.crash()
    shutil.copy(backup, saving.disk / DB)
    saving.start()
    assert saving.retained() == {"pnp/t/a"}
    assert "a restore?" in saving.log()
    assert _holds(saving.disk / REPLACED, "pnp/t/b")  # the RAM copy it replaced is kept

    # A host reboot: the RAM directory is gone, the disk copy is what is left.
    saving.retain("pnp/t/c")
    wait_until(lambda: saving.on_disk("pnp/t/c"), timeout=20, interval=0.1)
    saving.crash()
    shutil.rmtree(saving.ram)
    saving.start()
    assert saving.retained() == {"pnp/t/a", "pnp/t/c"}
    saving.stop()


@inside
def test_inside_kill_9_of_the_broker(saving):
    """The broker killed under `pnp up` comes back with what it had saved into RAM."""
    saving.start()
    saving.retain("pnp/t/a")
    wait_until(lambda: saving.in_ram("pnp/t/a"), timeout=20, interval=0.1)
    old = saving.broker_pid()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: "broker exited with signal 9" in saving.log(), timeout=10)
    wait_until(lambda: saving.broker_pid() not in (None, old), timeout=10)
    wait_until(lambda: saving.retained() == {"pnp/t/a"}, timeout=10, interval=0.2)
    saving.stop()
    assert saving.on_disk("pnp/t/a")


@inside
def test_inside_clean_stop(tmp_path):
    """With the default RAM directory (/dev/shm): a stop leaves the disk copy current (the
    broker's last save, just made) and no RAM copy; the next start finds everything."""
    saving = Saving(tmp_path / "data", None)
    try:
        saving.start()
        assert saving.ram.parent == Path("/dev/shm")
        assert stat.S_IMODE(saving.ram.stat().st_mode) == 0o700
        saving.retain("pnp/t/a")
        saving.stop()  # well before the next autosave: the stop's save is what has it
        assert saving.on_disk("pnp/t/a")
        assert not saving.ram.exists()
        assert stat.S_IMODE((saving.disk / DB).stat().st_mode) == 0o600
        saving.start()
        assert saving.retained() == {"pnp/t/a"}
        saving.stop()
        assert not saving.ram.exists()
    finally:
        saving.close()


@inside
def test_inside_foreign_ram_dir(saving):
    """A RAM directory that someone else made first is refused: the broker saves on disk."""
    saving.ram.mkdir()
    os.chown(saving.ram, 65534, 65534)
    saving.start()
    assert "the broker saves on disk" in saving.log() and "belongs to uid 65534" in saving.log()
    saving.retain("pnp/t/a")
    saving.stop()
    assert saving.on_disk("pnp/t/a")
    assert list(saving.ram.iterdir()) == []  # nothing of ours went into it


@inside
def test_inside_full_disk(saving):
    """The disk copy fails on a full disk: logged, retried, kept in RAM across a stop and a
    start, and copied once space returns."""
    saving.disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(saving.disk)],
                   check=True)
    try:
        saving.start()
        saving.retain("pnp/t/a")
        wait_until(lambda: saving.on_disk("pnp/t/a"), timeout=20, interval=0.1)
        filler = fill(saving.disk)
        saving.retain("pnp/t/b")
        wait_until(lambda: "cannot be copied" in saving.log(), timeout=20, interval=0.1)
        assert "no space left" in saving.log()
        assert not saving.on_disk("pnp/t/b")

        # A stop now cannot copy the last save: it says so, fails, and keeps it in RAM ...
        saving.probe.close()
        saving.proc.send_signal(signal.SIGTERM)
        assert saving.proc.wait(20) == 1
        assert "stays in" in saving.log()
        assert saving.in_ram("pnp/t/b")
        # ... where the next start finds it.
        saving.start()
        assert saving.retained() == {"pnp/t/a", "pnp/t/b"}

        filler.unlink()
        wait_until(lambda: saving.on_disk("pnp/t/b"), timeout=40, interval=0.2)
        wait_until(lambda: "copied to disk again" in saving.log(), timeout=5)
        saving.stop()
        assert saving.on_disk("pnp/t/b") and not saving.ram.exists()
    finally:
        saving.close()
        subprocess.run(["umount", str(saving.disk)])


# --- the decisions, without processes ------------------------------------------------------------

def test_a_failing_copy_is_said_once_reminded_retried_with_backoff_and_its_healing_said(tmp_path):
    core = SaveCore(on_disk=None)
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    first = (1, 2, 3, 4)
    assert core.due(0.0, first)
    assert not core.due(0.5, first)  # one copy at a time
    lines = core.failed(1.0, "no space left on the device", ram, disk)
    assert len(lines) == 1 and "cannot be copied" in lines[0] and str(ram) in lines[0]
    assert not core.due(1.5, first)  # retried after a backoff, not at every poll
    assert core.due(2.0, first)
    assert core.failed(2.0, "no space", ram, disk) == []  # not every failure: a reminder a minute
    said = []
    t = 2.0
    while t < 70:
        t += 1.0
        if core.due(t, first):
            said += core.failed(t, "no space", ram, disk)
    assert len(said) == 1 and "still cannot be copied" in said[0]
    t += brokersave.RETRY_MAX
    assert core.due(t, first)
    healed = core.copied(t, first)
    assert len(healed) == 1 and "copied to disk again" in healed[0]
    assert not core.due(t + 1, first)  # that save is on disk: nothing to do until the next
    assert core.due(t + 1, (1, 2, 3, 5))


def test_a_ram_dir_running_short_of_room_is_said_once_and_its_recovery_too(tmp_path):
    core = SaveCore(on_disk=None)
    mib = 2**20
    assert core.room(500 * mib, 20 * mib, tmp_path) == []
    short = core.room(10 * mib, 20 * mib, tmp_path)
    assert len(short) == 1 and "10 MiB free" in short[0] and "PNP_BROKER_RAM_DIR=off" in short[0]
    assert core.room(5 * mib, 20 * mib, tmp_path) == []
    assert "room for the broker's saves again" in core.room(300 * mib, 20 * mib, tmp_path)[0]


def test_an_unsafe_ram_dir_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert "open to others" in claim(loose)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert "not a directory" in claim(link)
    mine = tmp_path / "mine"
    assert claim(mine) is None and stat.S_IMODE(mine.stat().st_mode) == 0o700


def test_no_room_in_ram_keeps_the_newest_save_and_uses_disk(tmp_path, monkeypatch):
    data, base = tmp_path / "data", tmp_path / "shm"
    disk = data / "broker"
    disk.mkdir(parents=True)
    base.mkdir()
    plan = prepare(disk, data, base)
    assert plan.location == plan.ram
    (plan.ram / DB).write_bytes(b"newest save")  # what a crashed run left in RAM
    monkeypatch.setattr(brokersave, "ROOM_MIN", brokersave.free_bytes(base) * 2)
    plan = prepare(disk, data, base)
    assert plan.location == disk and plan.ram is None
    assert "MiB free" in plan.notes[-1]
    assert (disk / DB).read_bytes() == b"newest save"
    assert not ram_dir_for(base, data).exists()


def test_a_crash_between_the_copy_and_its_stamp_still_starts_from_ram(tmp_path, monkeypatch):
    """`pnp up` killed just after a copy's rename, before the stamp names the new disk file:
    the disk file is still one the RAM copy descends from, not taken for a restore."""
    data, base = tmp_path / "data", tmp_path / "shm"
    disk = data / "broker"
    disk.mkdir(parents=True)
    base.mkdir()
    ram = prepare(disk, data, base).ram
    (ram / DB).write_bytes(b"first save")
    brokersave.save_to_disk(ram, disk)
    (ram / DB).write_bytes(b"second save, newer")
    real = brokersave.write_stamp
    calls = []

    def killed_after_the_rename(where, files):
        calls.append(files)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process ends here
        real(where, files)

    monkeypatch.setattr(brokersave, "write_stamp", killed_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        brokersave.save_to_disk(ram, disk)
    monkeypatch.setattr(brokersave, "write_stamp", real)
    (ram / DB).write_bytes(b"third save, newest")  # the broker's save on its SIGTERM
    plan = prepare(disk, data, base)
    assert plan.location == ram and "starts from its RAM copy" in plan.notes[0]
    assert (ram / DB).read_bytes() == b"third save, newest"
    assert not (disk / REPLACED).exists()


def test_a_restore_while_pnp_up_was_away_wins_over_the_ram_copy(tmp_path):
    data, base = tmp_path / "data", tmp_path / "shm"
    disk = data / "broker"
    disk.mkdir(parents=True)
    base.mkdir()
    ram = prepare(disk, data, base).ram
    (ram / DB).write_bytes(b"the newest save")
    brokersave.save_to_disk(ram, disk)
    (ram / DB).write_bytes(b"newer still, then `pnp up` crashed")
    (disk / DB).write_bytes(b"a backup")  # restored over the same file
    plan = prepare(disk, data, base)
    assert plan.location == ram and "a restore?" in plan.notes[0]
    assert (ram / DB).read_bytes() == b"a backup"
    assert (disk / REPLACED).read_bytes() == b"newer still, then `pnp up` crashed"
