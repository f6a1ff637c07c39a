"""What a service says about its own health: ``ok``, or ``degraded`` with the reasons.

Faults are keyed by what is wrong ("mqtt", "store", ...) so that whoever sees a fault end clears
its own key. Notices are faults that already healed (a corrupt store rebuilt at start): they
count and explain, but do not degrade. The runner publishes a change at once on the status topic;
the fileserver's ``/healthz`` and ``pnp health`` read the same model.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.logger import Logger

log = Logger(namespace="health")

OK, DEGRADED = "ok", "degraded"


class Health:
    def __init__(self) -> None:
        self.faults: dict[str, str] = {}
        self.notices: dict[str, str] = {}
        self.counters: Counter = Counter()
        self.on_change: Callable[[], Any] | None = None

    @property
    def status(self) -> str:
        return DEGRADED if self.faults else OK

    def fault(self, key: str, reason: str) -> None:
        """Degraded for ``reason`` until :meth:`clear` of ``key``; a new reason replaces the old."""
        new = key not in self.faults
        self.faults[key] = reason
        if new:
            log.error("degraded: {reason}", reason=reason)
            self._changed()

    def clear(self, key: str) -> None:
        if self.faults.pop(key, None) is not None:
            log.info("{key} healthy again{rest}", key=key,
                     rest="" if self.faults else "; the service is ok")
            self._changed()

    def notice(self, key: str, text: str) -> None:
        """Something went wrong and was healed: counted under ``key``, its last words kept."""
        self.counters[key] += 1
        self.notices[key] = text
        self._changed()

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": dict(self.faults), "notices": dict(self.notices)}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
