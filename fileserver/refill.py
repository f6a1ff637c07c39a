"""After a rebuilt ``fileserver.db``: what the retained topics still know of our own past.

The configs refill the files by themselves (the service stores every retained config). Two
things only this instance wrote are lost with the old store and are taken back here from the
retained messages, once, as they arrive after the start:

- which file each phone was served and came back for (our own retained ``fetched``), so a
  provisioned phone stays provisioned rather than starting the reboot-and-compare again;
- which devices we reported in error (our own retained ``error``), so a good config clears it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from fileserver.core import FileCore
from fileserver.store import Store
from services.mqtt import Incoming

log = Logger(namespace="fileserver")


class Refill:
    def __init__(self, ctx: Any, core: FileCore, store: Store) -> None:
        self.ctx = ctx
        self.core = core
        self.store = store
        self.count = 0
        self._done: set[tuple[str, str]] = set()  # a reconnect replays the same messages

    def start(self) -> None:
        bus, topics = self.ctx.bus, self.ctx.topics
        bus.subscribe(topics.devices("fetched"), self.on_fetched)
        bus.subscribe(topics.devices("error"), self.on_error)

    def _ours(self, msg: Incoming, who: str) -> tuple[str, dict] | None:
        if not msg.retain or msg.empty:
            return None
        info = self.ctx.topics.parse(msg.topic)
        data = msg.data
        if info is None or not info.mac_ok or not isinstance(data, dict) or data.get(who) != self._me(who):
            return None
        return info.mac, data

    def _me(self, who: str) -> str:
        return self.ctx.settings.instance if who == "server" else self.ctx.name

    def on_fetched(self, msg: Incoming) -> None:
        found = self._ours(msg, "server")
        if found is None:
            return
        mac, data = found
        name, sha = data.get("file"), data.get("sha256")
        provisioned = data.get("provisioned") is True
        if not isinstance(name, str) or not isinstance(sha, str) or (data.get("status") != 200
                                                                     and not provisioned):
            return
        tracker = self.core.tracker
        if (mac, name) in self._done or tracker.is_provisioned(mac, name, sha):
            return
        self._done.add((mac, name))
        outcome = tracker.record(mac, name, 200, sha)
        if provisioned:
            outcome = tracker.record(mac, name, 304, sha)
        self.store.set_fetch_state(mac, name, outcome.served, outcome.provisioned_sha)
        self._counted()

    def on_error(self, msg: Incoming) -> None:
        found = self._ours(msg, "service")
        if found is None or found[0] in self.core.errored:
            return
        self.core.errored.add(found[0])
        self.store.set_errored(found[0], True)
        self._counted()

    def _counted(self) -> None:
        self.count += 1
        if self.count == 1:
            log.info("the store was rebuilt: taking back downloads and errors from the retained topics")
