"""Notifier: sends each phone the SIP NOTIFY with its file's URL, and a resync when it changes."""

from services import settings as s

from notifier import settings as ns

SETTINGS = [s.SIP_INTERFACE, s.SIP_PORT, *ns.ALL]


def start(ctx):
    from notifier.service import Notifier

    return Notifier(ctx)
