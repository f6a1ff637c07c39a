"""After a rebuilt ``generator.db``: each device's revision is taken back from its retained config.

A fresh store knows no revisions, so every device would render as revision 1: a phone that runs
revision 7 would be told of a "new" revision and resync. Until the first rendering, the retained
``devices/{mac}/config`` (our own earlier output) gives each device's revision and digest back;
the rendering then finds the same bytes and keeps the revision (or bumps it past the old one).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from generator.engine import Engine
from generator.render import files_digest
from generator.store import RenderRecord
from services.bus import Incoming
from services.messages import Config, PayloadError

log = Logger(namespace="generator")


class Reseed:
    def __init__(self, ctx: Any, engine: Engine) -> None:
        self.ctx = ctx
        self.engine = engine
        self.count = 0

    def start(self) -> None:
        # subscribed before the service's own topics: the first rendering waits for all of them
        self.ctx.bus.subscribe(self.ctx.topics.devices("config"), self.on_config)

    def on_config(self, msg: Incoming) -> None:
        engine = self.engine
        if engine.ready or not msg.retain or msg.empty:
            return  # after the first rendering our own configs come back: nothing to learn
        info = self.ctx.topics.parse(msg.topic)
        if info is None or not info.mac_ok or not self.ctx.settings.generator_shard.owns(info.mac):
            return
        try:
            config = Config.from_json(msg.data)
        except PayloadError:
            return
        if info.mac in engine.records:
            return
        digest = files_digest((f.name, f.sha256) for f in config.files)
        engine.records[info.mac] = RenderRecord(config.revision, digest)
        engine.store.save_render(info.mac, config.revision, digest, config.template, config.vendor,
                                 config.model, False)
        self.count += 1
        if self.count == 1:
            log.info("the store was rebuilt: taking each device's revision from its retained config")
