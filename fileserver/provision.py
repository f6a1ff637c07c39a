"""When is a phone provisioned? When it comes back after a 200 and gets the same sha256 again.

That is the guide's reboot-and-compare: the phone downloads, flashes, reboots, downloads again
and finds the same checksum. Tracked per file; only transitions need saving.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    provisioned: bool
    changed: bool  # the state moved and should be saved
    served: str
    provisioned_sha: str


class ProvisionTracker:
    def __init__(self, states: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
        # (mac, name) -> (sha256 last served with a 200, sha256 the phone came back for)
        self._states = dict(states or {})

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

    def forget(self, mac: str) -> None:
        for key in [k for k in self._states if k[0] == mac]:
            del self._states[key]
