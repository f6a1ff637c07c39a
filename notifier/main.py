"""Notifier: sends each phone the SIP NOTIFY with its file's URL, and a resync when it changes."""

from __future__ import annotations

from notifier.service import Notifier
from notifier.settings import SETTINGS, check as check_settings
from notifier.state import Store
from services.runner import Context

__all__ = ["SETTINGS", "check_settings", "start"]


def start(ctx: Context) -> Notifier:
    reactor = ctx.reactor
    # One commit per reactor turn, however many messages that turn read: the sent log is on
    # disk before the next turn (a crash in between may repeat those NOTIFYs, never lose one).
    store = Store(ctx.database_path(), later=lambda commit: reactor.callLater(0, commit),
                  clock=reactor, health=ctx.health)
    return Notifier(ctx, store).start()
