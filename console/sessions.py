"""Sessions, CSRF tokens and login throttling, in memory (a restart logs everyone out).

Sans-I/O: every method takes the time (``now``, seconds) from the caller.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

SESSION_IDLE = 8 * 3600.0  # seconds without a request before a session ends
MAX_SESSIONS = 10_000
FAILURES_ALLOWED = 5  # per user name and client address ...
FAILURE_WINDOW = 300.0  # ... within this many seconds; then refused until it passes


@dataclass
class Session:
    token: str
    user: str
    role: str
    csrf: str
    last_used: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}
        self._failures: dict[tuple[str, str], list[float]] = {}

    def create(self, user: str, role: str, now: float) -> Session:
        if len(self._by_token) >= MAX_SESSIONS:
            self.expire(now)
            if len(self._by_token) >= MAX_SESSIONS:  # the oldest goes: a flood cannot lock out
                oldest = min(self._by_token.values(), key=lambda s: s.last_used)
                del self._by_token[oldest.token]
        session = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None, now: float) -> Session | None:
        session = self._by_token.get(token or "")
        if session is None:
            return None
        if now - session.last_used > SESSION_IDLE:
            del self._by_token[session.token]
            return None
        session.last_used = now
        return session

    def end(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)

    def expire(self, now: float) -> None:
        for token in [t for t, s in self._by_token.items() if now - s.last_used > SESSION_IDLE]:
            del self._by_token[token]

    # --- login throttling ---
    def throttled(self, user: str, client: str, now: float) -> bool:
        recent = [t for t in self._failures.get((user, client), []) if now - t < FAILURE_WINDOW]
        return len(recent) >= FAILURES_ALLOWED

    def failed(self, user: str, client: str, now: float) -> None:
        if len(self._failures) > 100_000:  # a spray of names cannot grow this without bound
            self._failures.clear()
        key = (user, client)
        self._failures[key] = [t for t in self._failures.get(key, []) if now - t < FAILURE_WINDOW] + [now]

    def succeeded(self, user: str, client: str) -> None:
        self._failures.pop((user, client), None)


def check_csrf(session: Session | None, token: str | None) -> bool:
    return session is not None and bool(token) and secrets.compare_digest(session.csrf, token or "")
