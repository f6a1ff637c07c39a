"""When is a phone provisioned? When it comes back after a 200 and gets the same sha256 again.

That is the guide's reboot-and-compare: the phone downloads, flashes, reboots, downloads again
and finds the same checksum. Tracked per file; only transitions need saving.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    provisioned: bool
    changed: bool  # the state moved and should be saved
    served: str
    provisioned_sha: str


def password_digest(password: str) -> str:
    """What is kept of a retired password: enough to recognise it, not to use it."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


class ProvisionTracker:
    def __init__(self, states: dict[tuple[str, str], tuple[str, str]] | None = None,
                 retired: dict[str, str] | None = None) -> None:
        # (mac, name) -> (sha256 last served with a 200, sha256 the phone came back for)
        self._states = dict(states or {})
        # mac -> sha256 of the pre-rotation HTTP password the phone has moved past: it stays
        # refused when a later revision (an assignment change) still carries it as `previous`
        self._retired = dict(retired or {})

    def record(self, mac: str, name: str, status: int, sha256: str) -> Outcome:
        served, provisioned = self._states.get((mac, name), ("", ""))
        new_served, new_provisioned = served, provisioned
        if status == 200:
            if served == sha256:
                new_provisioned = sha256
            new_served = sha256
        elif status == 304 and served == sha256:
            new_provisioned = sha256
        changed = (new_served, new_provisioned) != (served, provisioned)
        if changed:
            self._states[(mac, name)] = (new_served, new_provisioned)
        return Outcome(new_provisioned == sha256, changed, new_served, new_provisioned)

    def is_provisioned(self, mac: str, name: str, sha256: str) -> bool:
        return self._states.get((mac, name), ("", ""))[1] == sha256

    def served(self, mac: str, name: str) -> str:
        """The sha256 last served with a 200 ("" when none was)."""
        return self._states.get((mac, name), ("", ""))[0]

    def retire(self, mac: str, digest: str) -> bool:
        """Mark a previous password (its sha256) as moved past; True when that is news."""
        if self._retired.get(mac) == digest:
            return False
        self._retired[mac] = digest
        return True

    def is_retired(self, mac: str, digest: str) -> bool:
        return self._retired.get(mac) == digest

    def forget(self, mac: str) -> None:
        for key in [k for k in self._states if k[0] == mac]:
            del self._states[key]
        self._retired.pop(mac, None)
