"""A service's own sqlite store: opened safely, written without losing anything.

- :func:`open_database`: a store that is corrupt, truncated or not a database at all is moved
  aside (``<name>.db.corrupt-<UTC time>``, with its ``-wal`` and ``-shm``) and a fresh one is
  made; the service then refills it from the broker's retained messages, as at any start. The
  event is logged and counted (``store_rebuilt``) in the service's health.
- :class:`Writes`: statements queued and committed together. A commit that fails (disk full,
  I/O error) keeps every statement and retries with backoff; meanwhile the service is degraded.
- Data directories are 0700 and store and secret files 0600: they hold SIP passwords. Made so,
  and tightened at start when found looser.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import sqlite_utils
from twisted.logger import Logger

log = Logger(namespace="store")

SIDE_FILES = ("-wal", "-shm")
# sqlite's result codes that mean "this file is not a usable database" (sqlite3.h)
_BROKEN = {11: "SQLITE_CORRUPT", 26: "SQLITE_NOTADB", 24: "SQLITE_FORMAT"}
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
LOG_EVERY = 60.0


class HealthLike(Protocol):
    def fault(self, key: str, reason: str) -> None: ...
    def clear(self, key: str) -> None: ...
    def notice(self, key: str, text: str) -> None: ...


# --- modes --------------------------------------------------------------------------------------

def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (made, or tightened when looser)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> None:
    """Tighten ``path`` to 0600 when it exists and others may read it."""
    _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        try:
            os.chmod(path, mode)
            log.info("{path} was readable by others (mode {old:o}); now {new:o}", path=str(path),
                     old=current, new=mode)
        except OSError as exc:  # not ours (a mounted volume): say so, and carry on
            log.warn("{path} is readable by others (mode {old:o}) and cannot be tightened: {error}",
                     path=str(path), old=current, error=exc.strerror or str(exc))


# --- opening ------------------------------------------------------------------------------------

class Broken(Exception):
    """The file at hand is not a usable database; the message says why."""


@dataclass
class Opened:
    db: sqlite_utils.Database
    # why the old store was moved aside, and where to; None when it opened fine
    rebuilt: str | None = None


def open_database(path: Path | str, health: HealthLike | None = None) -> Opened:
    """The sqlite database at ``path`` (WAL, ``synchronous=NORMAL``), made owner-only; a broken
    one is moved aside and replaced by an empty one."""
    path = Path(path)
    private_dir(path.parent)
    for name in (path, *(_side(path, s) for s in SIDE_FILES)):
        private_file(name)
    kept = _keep_sides(path)
    try:
        try:
            return Opened(_connect(path))
        except Broken as exc:
            why = str(exc)
        moved = _move_aside(path, kept)
    finally:
        for link in kept.values():
            link.unlink(missing_ok=True)
    db = _connect(path)
    where = f"moved to {moved.name}" if moved else "removed it (nothing in it to keep)"
    text = (f"{path.name} could not be used ({why}): {where}; a fresh one is refilled from the "
            "broker's retained messages")
    log.error("{text}", text=text)
    if health is not None:
        health.notice("store_rebuilt", text)
    return Opened(db, text)


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _connect(path: Path) -> sqlite_utils.Database:
    if path.exists():
        _check(path)
    else:
        # created owner-only before sqlite opens it; its -wal and -shm then get the same mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return sqlite_utils.Database(conn)


def _check(path: Path) -> None:
    """Raise :class:`Broken` unless ``path`` is a sound database. Read-only, so that sqlite
    neither replays nor deletes a -wal that belongs with a broken file: it is moved aside too."""
    if not path.is_file():
        raise Broken("it is not a file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise _broken(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise _broken(exc)
    finally:
        conn.close()
    if rows != [("ok",)]:
        raise Broken(f"quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")
    if not tables:
        # sqlite takes an empty file for a new database; ours always hold tables, so this is a
        # truncated one (or one whose first start died at once: moving it aside costs nothing)
        raise Broken(f"it holds no tables ({path.stat().st_size} bytes)")


def _broken(exc: sqlite3.DatabaseError) -> Exception:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BROKEN:
        return Broken(f"{exc}, {_BROKEN[code & 0xFF]}")
    return exc  # not the file's fault (locked, no space...): raised as it is


def _keep_sides(path: Path) -> dict[str, Path]:
    """Hard links to the -wal and -shm as they are before sqlite looks: it may delete a -wal
    that does not fit a broken file, and that -wal is part of what is moved aside."""
    kept = {}
    for suffix in SIDE_FILES:
        side, link = _side(path, suffix), _side(path, suffix + ".keep")
        try:
            link.unlink(missing_ok=True)
            os.link(side, link)
        except OSError:
            continue
        kept[suffix] = link
    return kept


def _move_aside(path: Path, kept: dict[str, Path]) -> Path | None:
    if not kept and path.is_file() and path.stat().st_size == 0:
        # an empty file alone (a first start that died at once, on a full disk say): no litter
        path.unlink()
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # the side files first: a -wal left behind next to a fresh database would be replayed into it
    for suffix in SIDE_FILES:
        side = kept.get(suffix) or _side(path, suffix)
        if side.exists():
            side.rename(_side(target, suffix))
        _side(path, suffix).unlink(missing_ok=True)
    if path.exists():
        path.rename(target)
    return target


# --- writing ------------------------------------------------------------------------------------

Later = Callable[[Callable[[], Any]], Any]


class Writes:
    """Statements queued and run in one transaction by :meth:`commit`.

    ``later`` decides when a first queued statement gets committed: None commits each at once;
    a function is handed :meth:`commit` to call soon (the next reactor turn, say). A commit that
    fails rolls back, keeps every statement in order and, with a ``clock``, retries after a
    backoff (0.5 s doubling to 10 s); the store is a ``store`` fault in ``health`` until a
    commit succeeds. Nothing is dropped, so memory holds what the disk cannot take yet.
    """

    def __init__(self, conn: sqlite3.Connection, label: str, later: Later | None = None,
                 clock: Any = None, health: HealthLike | None = None) -> None:
        self.conn = conn
        self.label = label
        self.later = later
        self.clock = clock
        self.health = health
        self.queue: list[tuple[str, Any]] = []
        self.failures = 0
        self._asked = False
        self._retry: Any = None
        self._scheduled: Any = None  # what ``later`` returned (a DelayedCall), until it runs
        # run first by every commit (scheduled, retried, at close): what must reach the broker
        # before the queue reaches the disk (the notifier's held statuses)
        self.before_commit: Callable[[], Any] | None = None
        self._delay = RETRY_FIRST
        self._logged_at = float("-inf")
        self.closed = False

    def add(self, sql: str, params: Any) -> None:
        self.queue.append((sql, params))
        if self._retry is not None or self._asked:
            return  # the commit already coming takes this one too
        if self.later is None:
            self.commit()
        else:
            self._asked = True
            self._scheduled = self.later(self.commit)

    def commit(self, force: bool = False) -> bool:
        """Run the queue in one transaction; False (the queue kept) when that failed, or when a
        retry is waiting out its backoff (unless ``force``)."""
        self._asked = False
        if self._retry is not None and self._retry.active():
            if not force:
                return False
            self._retry.cancel()
        self._retry = None
        if self.closed or not self.queue:
            return True
        if self.before_commit is not None:
            self.before_commit()
        batch, self.queue = self.queue, []
        conn = self.conn
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN")
            # Runs of one statement (a burst of sent records) go to sqlite as one executemany.
            start = 0
            for i in range(1, len(batch) + 1):
                if i == len(batch) or batch[i][0] != batch[start][0]:
                    if i - start == 1:
                        conn.execute(batch[start][0], batch[start][1])
                    else:
                        conn.executemany(batch[start][0], [params for _, params in batch[start:i]])
                    start = i
            conn.commit()
        except (sqlite3.Error, OSError) as exc:
            try:
                conn.rollback()
            except (sqlite3.Error, OSError):
                pass
            self.queue[:0] = batch
            self._failed(exc)
            return False
        if self.failures:
            log.info("{label} written again after {n} failed commits; {count} kept writes committed",
                     label=self.label, n=self.failures, count=len(batch))
            self.failures = 0
            self._delay = RETRY_FIRST
        if self.health is not None:
            self.health.clear("store")
        return True

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        error = str(exc) or type(exc).__name__
        now = time.monotonic()
        if self.failures == 1 or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.error("{label} cannot be written ({error}): {count} writes kept, retrying "
                      "(failure {n})", label=self.label, error=error, count=len(self.queue),
                      n=self.failures)
        if self.health is not None:
            self.health.fault("store", f"{self.label} cannot be written ({error}); "
                              f"{len(self.queue)} writes kept and retried")
        if self.clock is not None:
            self._retry = self.clock.callLater(self._delay, self._again)
            self._delay = min(self._delay * 2, RETRY_MAX)

    def _again(self) -> None:
        self._retry = None
        self.commit()

    def close(self) -> None:
        """A last commit; what still cannot be written is logged as lost (the broker has it)."""
        if self.closed:
            return
        if not self.commit(force=True):
            log.error("{label}: {count} writes could not be committed before stopping; the "
                      "broker's retained messages bring them back at the next start",
                      label=self.label, count=len(self.queue))
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        # the last commit above took what the scheduled one would have: nothing is left behind
        # to run on a closed store
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and getattr(scheduled, "active", lambda: False)():
            scheduled.cancel()
        self.closed = True
