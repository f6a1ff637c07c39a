"""Fileserver: serves each phone its files, with checksums."""

from services import settings as s

SETTINGS = [s.HTTP_PORT, s.PUBLIC_URL, s.SIP_INTERFACE]


def start(ctx):
    return None
