"""Defences against MAC enumeration and borrowed files: User-Agent MACs and a 404 limiter.

Provisioning servers leak SIP passwords when a client can walk the MAC space and collect the
files it hits. The per-device secret path already makes hits unlikely; this refuses the
walker outright after a few misses, and refuses a phone that announces a different MAC.
A ban is on an address, which a NAT may share with real phones: what it refuses (not a
device's own secret path, valid credentials or our own healthcheck) is decided in resource.py.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

# Grandstream: "... DevId 000b82f55284"; Yealink and others: "... 00:15:65:aa:bb:cc";
# some put the bare twelve digits in the string.
_DEVID = re.compile(r"\bDevId[\s:=]*([0-9A-Fa-f]{12})\b")
_SEPARATED = re.compile(r"(?<![0-9A-Fa-f:-])((?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2})(?![0-9A-Fa-f:-])")
_BARE = re.compile(r"(?<![0-9A-Za-z.])([0-9A-Fa-f]{12})(?![0-9A-Za-z.])")


def user_agent_mac(user_agent: str) -> str | None:
    """The MAC a User-Agent names (lowercase, no separators), or None when it names none."""
    for pattern in (_DEVID, _SEPARATED, _BARE):
        m = pattern.search(user_agent)
        if m:
            return re.sub(r"[:-]", "", m.group(1)).lower()
    return None


@dataclass
class _Client:
    misses: deque = field(default_factory=deque)
    banned_until: float = 0.0


class NotFoundLimiter:
    """Counts each client's 404s in a sliding window; past ``limit`` it is refused for ``ban``
    seconds. Memory stays bounded: the least recently seen clients are forgotten first."""

    def __init__(self, limit: int, window: float, ban: float, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.ban = ban
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self.bans = 0

    def refused(self, client: str, now: float) -> float:
        """Seconds ``client`` is still refused for (0 when it may ask)."""
        state = self._clients.get(client)
        if state is None or state.banned_until <= now:
            return 0.0
        return state.banned_until - now

    def not_found(self, client: str, now: float) -> bool:
        """Record a 404 for ``client``; True when this one got it banned."""
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        misses = state.misses
        misses.append(now)
        while misses and misses[0] <= now - self.window:
            misses.popleft()
        if len(misses) >= self.limit and state.banned_until <= now:
            state.banned_until = now + self.ban
            misses.clear()
            self.bans += 1
            return True
        return False

    def banned_count(self, now: float) -> int:
        return sum(1 for c in self._clients.values() if c.banned_until > now)
