"""A log line per event, except in a burst: formatting a line costs a tenth of a NOTIFY's CPU, so
past ``per_second`` lines a second the rest are only counted, and one line says how many."""

from __future__ import annotations

from typing import Any, Callable


class BurstLog:
    def __init__(self, clock: Any, summary: Callable[[int], None], per_second: int = 20,
                 summary_after: float = 5.0) -> None:
        self.clock = clock
        self.summary = summary
        self.per_second = per_second
        self.summary_after = summary_after
        self._second_started = float("-inf")
        self._in_second = 0
        self._unlogged = 0
        self._flush: Any = None

    def __call__(self, line: Callable[[], None]) -> None:
        """Call ``line`` (which logs) unless this second already had ``per_second`` lines."""
        now = self.clock.seconds()
        if now - self._second_started >= 1.0:
            self._second_started = now
            self._in_second = 0
        self._in_second += 1
        if self._in_second <= self.per_second:
            line()
            return
        self._unlogged += 1
        if self._flush is None or not self._flush.active():
            self._flush = self.clock.callLater(self.summary_after, self.flush)

    def flush(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        count, self._unlogged = self._unlogged, 0
        if count:
            self.summary(count)
