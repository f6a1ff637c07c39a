"""Notifier: sends each phone the SIP NOTIFY with its file's URL, and a resync when it changes."""

from __future__ import annotations

from notifier.service import Notifier
from notifier.settings import SETTINGS, check as check_settings
from notifier.state import Store
from services.runner import Context

__all__ = ["SETTINGS", "check_settings", "start"]


# How long the first write of a batch waits for its commit. A commit costs more than a NOTIFY
# (30-50 us of CPU whatever it holds, then ~10 us a phone): at 500 phones/s a turn reads a
# message or two, and a commit per turn was a third of the notifier's own CPU per phone. The
# sent log reaches the disk at most this long after its NOTIFY left: a crash in between repeats
# those NOTIFYs after the restart (within the window), never loses one. Everything else in the
# store comes back with the broker's retained messages.
COMMIT_AFTER = 0.1  # seconds, as the generator's


def start(ctx: Context) -> Notifier:
    reactor = ctx.reactor
    store = Store(ctx.database_path(), later=lambda commit: reactor.callLater(COMMIT_AFTER, commit),
                  clock=reactor, health=ctx.health)
    notifier = Notifier(ctx, store)
    store.writes.before_commit = notifier.report_held  # Notifier.report_held says why
    return notifier.start()
