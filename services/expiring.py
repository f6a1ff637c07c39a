"""A bounded mapping whose entries expire a fixed time after they were put.

Sans-I/O: the caller passes the time. Used where a server remembers recent things for a while
(answered SIP transactions, Call-IDs of published boots) and an attacker must not make it grow.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """Entries expire ``ttl`` after they were put; past ``max_items`` the oldest go first."""

    __slots__ = ("ttl", "max_items", "_items")

    def __init__(self, ttl: float, max_items: int) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expires, value)

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        items = self._items
        items.pop(key, None)
        items[key] = (now + self.ttl, value)
        # Insertion order is expiry order (one ttl), so expired entries are at the front.
        while items:
            first = next(iter(items.values()))
            if first[0] > now and len(items) <= self.max_items:
                break
            items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
