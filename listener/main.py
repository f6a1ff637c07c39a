"""Listener: answers the phones' multicast SUBSCRIBE and publishes what they are."""

from services import settings as s

SETTINGS = [s.SIP_INTERFACE, s.SIP_PORT]


def start(ctx):
    return None
