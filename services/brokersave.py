"""Where `pnp up`'s broker keeps its live database, and how it is made durable on disk.

mosquitto saves by rewriting its whole database and fsyncing it, and forwards nothing while it
does: on disk the fsync alone held every message 16-19 ms for 21 MB (2,500 phones), 80-100 ms
for 85 MB. So under `pnp up` mosquitto saves into a private directory on RAM (tmpfs), where its
save costs only the serialising, and the supervisor copies each new save to
``PNP_DATA_DIR/broker`` in a thread of its own (write ``.new``, fsync, rename, fsync the
directory), outside the broker process. A crash of the broker or of `pnp up` leaves the RAM copy
(mosquitto saves on the SIGTERM it gets either way); a host reboot leaves the disk copy, at most
one poll plus one copy older than the last save.

At start :func:`prepare` decides where the broker's database lives: the RAM copy when one is
there and descends from the disk copy as it is now (a stamp in the RAM directory names the disk
file it was seeded from or last copied to); the disk copy, seeded into RAM, otherwise (after a
reboot, a clean stop, or an operator's restore into ``PNP_DATA_DIR/broker``). :class:`SaveCore`
decides when to copy and what to say about a copy that fails; :class:`DiskSaver` runs it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DB = "mosquitto.db"
# In the RAM directory: which disk file the RAM copy descends from (JSON: a list of identities,
# null for "no disk file"; two while a copy renames).
STAMP = "disk.stamp"
# Set aside in the disk directory when a restore replaces a newer RAM copy: nothing is dropped.
REPLACED = DB + ".replaced-ram"
# A save needs room for a second whole copy (mosquitto writes .new, then renames), and the
# database grows between starts: use RAM only while it has this many times the database free,
# and never below ROOM_MIN (a container's 64 MB /dev/shm stays on disk).
ROOM_FACTOR = 4
ROOM_MIN = 256 * 1024 * 1024
DEFAULT_BASE = Path("/dev/shm")

# (st_dev, st_ino, st_size, st_mtime_ns): a rename keeps it, a restore or any rewrite changes it.
Identity = tuple[int, int, int, int]


def identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _identity(st)


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def ram_dir_for(base: Path, data_dir: Path) -> Path:
    """A name that the next `pnp up` on the same data directory, by the same user, finds again."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return Path(base) / f"pnp-broker-{os.getuid()}-{digest}"


def claim(path: Path) -> str | None:
    """Make ``path`` ours (0700), or say why it cannot be trusted. In a shared directory such as
    /dev/shm another local user could create the name first and read or replace the database
    (it holds SIP passwords): a directory not made by us, or open to others, is refused."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} exists and is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"{path} is open to others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def copy_file(src: Path, dst: Path,
              before_rename: Callable[[Identity], None] | None = None) -> Identity:
    """Copy ``src`` to ``dst`` so that a crash at any point leaves the old or the new ``dst``
    whole: ``dst.new`` (0600) written and fsynced, renamed, the directory fsynced.
    ``before_rename`` gets the identity that ``dst`` is about to have. Returns the identity of
    the source as read (mosquitto may rename a newer save over it meanwhile)."""
    tmp = dst.with_name(dst.name + ".new")
    with open(src, "rb") as fin:
        source = _identity(os.fstat(fin.fileno()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
                written = _identity(os.fstat(fout.fileno()))
        except BaseException:
            try:
                os.unlink(tmp)  # a half copy would only take the room that is short
            except OSError:
                pass
            raise
    if before_rename is not None:
        before_rename(written)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return source


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_stamp(ram: Path, disk_files: list[Identity | None]) -> None:
    """Name the disk files the RAM copy descends from (None: no disk file)."""
    tmp = ram / (STAMP + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(disk_files, f)
    os.replace(tmp, ram / STAMP)


def read_stamp(ram: Path) -> list[Identity | None]:
    """The disk files the RAM copy descends from; [] when there is no readable stamp."""
    try:
        value = json.loads((ram / STAMP).read_text())
    except (OSError, ValueError):
        return []
    found: list[Identity | None] = []
    for item in value if isinstance(value, list) else []:
        if item is None:
            found.append(None)
        elif isinstance(item, list) and len(item) == 4 and all(isinstance(v, int) for v in item):
            found.append((item[0], item[1], item[2], item[3]))
    return found


def save_to_disk(ram: Path, disk: Path) -> Identity:
    """Copy the RAM database to the disk directory, the stamp following it: while the rename
    is under way both the old and the new disk file count as what RAM descends from, so a crash
    at any point leaves a stamp that matches the disk. Returns the identity of the RAM file that
    was copied."""
    before = identity(disk / DB)

    def stamp_both(new: Identity) -> None:
        write_stamp(ram, [before, new])

    copied = copy_file(ram / DB, disk / DB, stamp_both)
    write_stamp(ram, [identity(disk / DB)])
    return copied


LOCK = "pnp-up.lock"
LOCK_WAIT = 15.0


class Busy(Exception):
    pass


def lock(disk: Path, wait: float = LOCK_WAIT) -> int:
    """An exclusive lock on the broker's data for this `pnp up`: the returned descriptor is
    handed to the broker too, so that it is held until both are gone. A `pnp up` killed a
    moment ago may leave its broker saving into RAM; a second one on the same data would read
    that save half-way, or remove it under the broker. Waits ``wait`` seconds for it, then
    raises :class:`Busy`."""
    import fcntl

    fd = os.open(disk / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Busy(f"another `pnp up` (or its broker) is using {disk}") from None
            time.sleep(0.1)


# The copy yields the CPU to the broker (on a small box they share two cores): nothing waits
# for it but the disk copy's lag.
COPY_NICE = 10


def save_to_disk_niced(ram: Path, disk: Path) -> Identity:
    """:func:`save_to_disk` from a thread that runs at a lower priority from then on (Linux
    gives each thread its own nice value; the supervisor's pool threads do nothing else)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), COPY_NICE))
    except OSError:
        pass
    return save_to_disk(ram, disk)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def room_for(size: int, free: int) -> bool:
    return free >= max(ROOM_FACTOR * size, ROOM_MIN)


@dataclass
class Plan:
    """Where the broker keeps its database this run, and what to log about the choice."""

    location: Path
    ram: Path | None = None
    notes: list[str] = field(default_factory=list)
    # identity of the RAM file that the disk copy already holds (None: copy at the first poll)
    on_disk: Identity | None = None


def prepare(disk: Path, data_dir: Path, base: Path | None) -> Plan:
    """Choose and set up the broker's persistence directory, before the broker starts.
    ``disk`` is PNP_DATA_DIR/broker (made already); ``base`` the RAM directory's parent (None:
    RAM is turned off). Raises OSError only when the disk copy itself cannot be made."""
    if base is None:
        return Plan(disk, notes=["the broker saves on disk (PNP_BROKER_RAM_DIR=off)"])
    ram = ram_dir_for(base, data_dir)
    refused = claim(ram)
    if refused:
        return Plan(disk, notes=[f"the broker saves on disk, not in {base}: {refused}"])
    notes: list[str] = []
    ram_db, disk_db = ram / DB, disk / DB
    use_ram_copy = ram_db.exists() and identity(disk_db) in read_stamp(ram)
    if ram_db.exists() and not use_ram_copy:
        # The disk copy changed while `pnp up` was away (an operator's restore): it wins, and
        # the RAM copy it replaces is kept beside it rather than dropped.
        copy_file(ram_db, disk / REPLACED)
        os.unlink(ram_db)
        notes.append(f"{disk_db} changed since the last save was copied (a restore?): starting "
                     f"from it; the newer RAM copy it replaces is kept as {disk / REPLACED}")
    newest = identity(ram_db if use_ram_copy else disk_db)
    size = newest[2] if newest else 0
    # the RAM copy's own room counts as free: it is replaced, not added to
    free = free_bytes(ram) + (size if use_ram_copy else 0)
    if not room_for(size, free):
        if use_ram_copy:
            save_to_disk(ram, disk)  # the newest save, kept before RAM is given up
        shutil.rmtree(ram, ignore_errors=True)
        return Plan(disk, notes=notes + [
            f"the broker saves on disk: {base} has {free // 2**20} MiB free, and a "
            f"{size // 2**20} MiB database needs {max(ROOM_FACTOR * size, ROOM_MIN) // 2**20} MiB there"])
    if use_ram_copy:
        notes.append(f"the broker starts from its RAM copy in {ram} (the previous `pnp up` did "
                     f"not stop cleanly); it is copied to {disk} next")
        return Plan(ram, ram, notes)
    try:
        if not disk_db.exists():
            write_stamp(ram, [None])
            return Plan(ram, ram, notes)
        copy_file(disk_db, ram_db)
        write_stamp(ram, [identity(disk_db)])
    except OSError as exc:
        shutil.rmtree(ram, ignore_errors=True)
        return Plan(disk, notes=notes + [f"the broker saves on disk: {ram} cannot be filled "
                                         f"from {disk_db}: {describe(exc)}"])
    # what the disk holds is what RAM now holds: no copy until the broker saves
    return Plan(ram, ram, notes, on_disk=identity(ram_db))


def finish(ram: Path, disk: Path) -> None:
    """After the broker stopped (it saved on SIGTERM): the last copy, then RAM is given back.
    Raises OSError when the copy fails: the RAM copy then stays for the next start."""
    if (ram / DB).exists():
        save_to_disk(ram, disk)
    shutil.rmtree(ram)


# --- when to copy (sans I/O) --------------------------------------------------------------------

POLL = 1.0
RETRY_MAX = 30.0
REMIND_EVERY = 60.0


class SaveCore:
    """Decides, from the RAM file's identity and the time, when a copy starts, and what the
    operator is told when copies fail and when they work again."""

    def __init__(self, on_disk: Identity | None) -> None:
        self.on_disk = on_disk
        self.busy = False
        self.failures = 0
        self.retry_at = 0.0
        self.reminded_at = 0.0
        self.failing_since: float | None = None
        self.short_of_room = False

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def due(self, now: float, current: Identity | None) -> bool:
        """Whether to start a copy now; if so the caller reports :meth:`copied` or :meth:`failed`."""
        if self.busy or current is None or current == self.on_disk or now < self.retry_at:
            return False
        self.busy = True
        return True

    def copied(self, now: float, source: Identity) -> list[str]:
        self.busy = False
        self.on_disk = source
        if not self.failures:
            return []
        lines = [f"the broker's save is copied to disk again, after {self.failures} failed "
                 f"copies over {now - (self.failing_since or now):.0f}s"]
        self.failures = 0
        self.retry_at = 0.0
        self.failing_since = None
        return lines

    def room(self, free: int, size: int, ram: Path) -> list[str]:
        """After each copy: whether the RAM directory still has room for the next save (a
        second whole database while mosquitto writes it). Said once when it runs short, once
        when it has room again."""
        short = free < size
        if short == self.short_of_room:
            return []
        self.short_of_room = short
        if short:
            return [f"WARNING: {ram} has {free // 2**20} MiB free, less than the broker's "
                    f"{size // 2**20} MiB database: its next save there may fail (the last one "
                    f"stays, in RAM and on disk); free room there, or restart with "
                    f"PNP_BROKER_RAM_DIR=off"]
        return [f"{ram} has room for the broker's saves again"]

    def failed(self, now: float, error: str, ram: Path, disk: Path) -> list[str]:
        self.busy = False
        self.failures += 1
        self.retry_at = now + min(2.0 ** (self.failures - 1), RETRY_MAX)
        if self.failures == 1:
            self.failing_since = now
            self.reminded_at = now
            return [f"ERROR: the broker's save cannot be copied to {disk}: {error}; retrying. "
                    f"Until it heals a host crash or reboot loses what changed since the last "
                    f"copy; the broker keeps its saves in {ram}, and a stop keeps them there"]
        if now - self.reminded_at >= REMIND_EVERY:
            self.reminded_at = now
            return [f"ERROR: the broker's save still cannot be copied to {disk} "
                    f"({self.failures} failures in {now - (self.failing_since or now):.0f}s): {error}"]
        return []


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device ({exc.filename or 'disk'})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


# --- the glue: polls on the reactor, copies in a thread -------------------------------------------

class DiskSaver:
    """Runs :class:`SaveCore` for one RAM directory: a stat of the RAM file every POLL seconds
    on the reactor (cheap: tmpfs), each copy in the reactor's thread pool so the supervisor
    never blocks on the disk."""

    def __init__(self, reactor: Any, ram: Path, disk: Path, core: SaveCore,
                 say: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.ram = ram
        self.disk = disk
        self.core = core
        self.say = say
        self._loop: Any = None
        self._copying: Any = None
        # the last save could not be copied at stop: it is only in RAM
        self.left_in_ram = False

    def start(self) -> None:
        from twisted.internet import task

        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(POLL, now=True)

    def before_broker_start(self) -> str | None:
        """A RAM copy that vanished while we ran (someone cleared the RAM directory) is seeded
        again from disk, so the broker does not start empty and have that copied over the disk
        copy. Returns what to log, if anything."""
        if (self.ram / DB).exists() or identity(self.disk / DB) is None:
            return None
        refused = claim(self.ram)
        if refused:
            return f"ERROR: the broker's RAM copy is gone and cannot be put back: {refused}"
        copy_file(self.disk / DB, self.ram / DB)
        write_stamp(self.ram, [identity(self.disk / DB)])
        self.core.on_disk = identity(self.ram / DB)
        return f"the broker's RAM copy in {self.ram} was gone: seeded again from {self.disk}"

    def poll(self) -> None:
        if not self.core.due(self.reactor.seconds(), identity(self.ram / DB)):
            return
        from twisted.internet import threads

        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      save_to_disk_niced, self.ram, self.disk)
        d.addCallbacks(self._copied, self._failed)
        self._copying = d

    def _copied(self, source: Identity) -> None:
        self._copying = None
        lines = self.core.copied(self.reactor.seconds(), source)
        try:
            lines += self.core.room(free_bytes(self.ram), source[2], self.ram)
        except OSError:
            pass  # the directory is gone: before_broker_start deals with that
        for line in lines:
            self.say(line)

    def _failed(self, failure: Any) -> None:
        self._copying = None
        for line in self.core.failed(self.reactor.seconds(), describe(failure.value),
                                     self.ram, self.disk):
            self.say(line)

    def stop(self) -> Any:
        """Once the broker has stopped: wait for a copy under way, copy the final save, give
        RAM back. Fires when done; a failed copy is logged and leaves the RAM copy for the next
        start."""
        from twisted.internet import defer, threads

        if self._loop is not None and self._loop.running:
            self._loop.stop()
        pending = self._copying or defer.succeed(None)

        def final(_: Any) -> Any:
            return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                             finish, self.ram, self.disk)

        def done(_: Any) -> None:
            if self.core.failing:
                self.say("the broker's save is copied to disk again")

        def kept(failure: Any) -> None:
            self.left_in_ram = True
            self.say(f"ERROR: the broker's last save cannot be copied to {self.disk}: "
                     f"{describe(failure.value)}; it stays in {self.ram}, and the next `pnp up` "
                     f"starts from it (a host reboot before then loses it)")

        d = pending.addBoth(final)
        d.addCallbacks(done, kept)
        return d

