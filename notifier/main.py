"""Notifier: sends each phone the SIP NOTIFY with its file's URL."""

from services import settings as s

SETTINGS = [s.SIP_INTERFACE]


def start(ctx):
    return None
