"""A bounded mapping whose entries expire a fixed time after they were put.

Sans-I/O: the caller passes the time. Used where a server remembers recent things for a while
(answered SIP transactions, Call-IDs of published boots) and an attacker must not make it grow.
Bounded twice: in entries, and in bytes as the caller's ``size`` function counts them, because
the things an attacker chooses (a 60 KB Call-ID, an answer copying a long Via) are not all the
same size: 200,000 entries of 30 KB each are 6 GB.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What a Python entry costs beyond its strings' and bytes' lengths (the tuple, the dict slot,
# the object headers of key and value), measured roughly with sys.getsizeof on CPython 3.11.
ENTRY_OVERHEAD = 200


def _no_size(key: object, value: object) -> int:
    return 0


class Expiring(Generic[K, V]):
    """Entries expire ``ttl`` after they were put; past ``max_items`` entries or ``max_bytes``
    (``size(key, value) + ENTRY_OVERHEAD`` each, when ``size`` is given) the oldest go first,
    and :attr:`evicted` counts those that went before their time."""

    __slots__ = ("ttl", "max_items", "max_bytes", "size", "held_bytes", "evicted", "_items")

    def __init__(self, ttl: float, max_items: int, max_bytes: int | None = None,
                 size: Callable[[K, V], int] | None = None) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.size: Callable[[K, V], int] = size or _no_size
        self.held_bytes = 0
        self.evicted = 0
        # key -> (expires, value, bytes)
        self._items: OrderedDict[K, tuple[float, V, int]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self.held_bytes -= old[2]
        cost = self.size(key, value) + ENTRY_OVERHEAD if self.max_bytes is not None else 0
        items[key] = (now + self.ttl, value, cost)
        self.held_bytes += cost
        limit = self.max_bytes if self.max_bytes is not None else self.held_bytes
        # Insertion order is expiry order (one ttl), so expired entries are at the front.
        while items:
            first = next(iter(items.values()))
            if first[0] > now and len(items) <= self.max_items and self.held_bytes <= limit:
                break
            _, (expires, _, cost) = items.popitem(last=False)
            self.held_bytes -= cost
            if expires > now:
                self.evicted += 1

    def __len__(self) -> int:
        return len(self._items)
