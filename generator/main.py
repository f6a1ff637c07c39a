"""Generator: renders each phone's configuration files from its assignment (Jinja2 templates
per vendor family), publishing them retained on pnp/devices/{mac}/config."""

from __future__ import annotations

from generator.engine import Engine
from generator.render import Renderer
from generator.reseed import Reseed
from generator.service import GeneratorService
from generator.settings import SETTINGS
from generator.store import Store
from services.runner import Context

__all__ = ["SETTINGS", "start"]


def start(ctx: Context) -> GeneratorService:
    cfg = ctx.settings
    store = Store(ctx.database_path(), clock=ctx.reactor, health=ctx.health)
    engine = Engine(Renderer(cfg.template_dir, cfg.notify_body), store, cfg.public_url)
    service = GeneratorService(ctx, engine, cfg.generator_settle)
    if store.rebuilt or not engine.records:
        # A rebuilt store, or one that is new: on a first install nothing is retained, but a
        # deleted generator.db must not give every phone a new password (nor revision 1).
        # Its subscriptions go first: the first rendering waits for what they bring back.
        reseed = Reseed(ctx, engine)
        reseed.start()
        # Once ready it has nothing more to learn, and every config we publish would come back
        # to it through the broker (a few KB per phone, read, decoded and acknowledged).
        service.on_ready(reseed.stop)
    return service.start()
