"""After a rebuilt (or new) ``generator.db``: each device's revision is taken back from its retained config.

A fresh store knows no revisions, so every device would render as revision 1: a phone that runs
revision 7 would be told of a "new" revision and resync. Until the first rendering, the retained
``devices/{mac}/config`` (our own earlier output) gives each device's revision and digest back;
the rendering then finds the same bytes and keeps the revision (or bumps it past the old one).
Our own retained ``error`` messages say which devices were in error, so that a device that now
renders clears its error. Each device's HTTP credential comes back from the config's ``auth``
(with the ids of the last commands acted on), so the phones keep the one they hold and a
retained command is not acted on twice.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from generator.engine import Engine
from generator.render import files_digest
from generator.store import Credential, RenderRecord
from services.mqtt import Incoming
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
        self.ctx.bus.subscribe(self.ctx.topics.devices("error"), self.on_error)

    def stop(self) -> None:
        """Unsubscribe: after the first rendering our own messages come back, nothing to learn."""
        self.ctx.bus.remove_handler(self.ctx.topics.devices("config"), self.on_config)
        self.ctx.bus.remove_handler(self.ctx.topics.devices("error"), self.on_error)

    def _mac(self, msg: Incoming) -> str | None:
        if self.engine.ready or not msg.retain or msg.empty or msg.error is not None:
            return None  # after the first rendering our own messages come back: nothing to learn
        info = self.ctx.topics.parse(msg.topic)
        if info is None or not info.mac_ok or not self.ctx.settings.generator_shard.owns(info.mac):
            return None
        return info.mac

    def on_error(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None or not isinstance(msg.data, dict) or msg.data.get("service") != self.ctx.name:
            return
        record = self.engine.records.setdefault(mac, RenderRecord())
        if not record.errored:
            record.errored = True
            self.engine.store.set_errored(mac, True)

    def on_config(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        try:
            config = Config.from_json(msg.data)
        except PayloadError:
            return
        if config.auth is not None and config.auth.password:
            # the phones hold it: a new one would lock them out of our config server
            self.engine.recover_credential(mac, Credential(
                config.auth.password, config.auth.previous, config.enrol.rearm if config.enrol else "",
                config.auth.rotate))
        record = self.engine.records.setdefault(mac, RenderRecord())
        if record.digest:
            return
        record.revision = config.revision
        record.digest = files_digest((f.name, f.sha256) for f in config.files)
        self.engine.store.save_render(mac, record.revision, record.digest, config.template,
                                      config.vendor, config.model, record.errored)
        self.count += 1
        if self.count == 1:
            log.info("the store was rebuilt: taking each device's revision from its retained config")
