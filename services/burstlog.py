"""Log a line per event, but not a storm of them.

In a boot storm a line per phone costs more than the work it reports (formatting, writing, and
``pnp up`` relaying it), so past ``per_second`` lines in a second the rest are only counted and,
``summary_after`` seconds later, ``summary(count)`` logs how many were left out. The per-event
facts are on MQTT anyway.
"""

from __future__ import annotations

from typing import Any, Callable


class BurstLog:
    def __init__(self, clock: Any, summary: Callable[[int], None], per_second: int = 20,
                 summary_after: float = 5.0) -> None:
        self.clock = clock
        self.summary = summary
        self.per_second = per_second
        self.summary_after = summary_after
        self._window_start = float("-inf")
        self._in_window = 0
        self._skipped = 0
        self._call: Any = None

    def __call__(self, line: Callable[[], None]) -> None:
        """Run ``line`` (a call that logs) unless this second has had its share."""
        now = self.clock.seconds()
        if now - self._window_start >= 1.0:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        if self._in_window <= self.per_second:
            line()
            return
        self._skipped += 1
        if self._call is None:
            self._call = self.clock.callLater(self.summary_after, self.flush)

    def flush(self) -> None:
        """Log the count of lines left out so far (at once; also at stop)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        count, self._skipped = self._skipped, 0
        if count:
            self.summary(count)
