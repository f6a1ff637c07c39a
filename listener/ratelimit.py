"""A token bucket per packet source, in a bounded table: floods lose packets, phones do not."""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """``rate`` packets per second per key, bursts up to ``burst``. Time comes from the caller.

    The table keeps the ``max_keys`` most recently active sources; a forgotten source starts
    again with a full bucket, which is what an idle source would have anyway.
    """

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> [tokens, last time]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        self._buckets.move_to_end(key)
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)
