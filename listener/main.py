"""Listener: answers the phones' multicast SUBSCRIBE and publishes what they are."""

from __future__ import annotations

from listener.discovery import SubscribeCore
from listener.service import ListenerService
from listener.settings import SETTINGS
from services.runner import Context

__all__ = ["SETTINGS", "start"]


def start(ctx: Context) -> ListenerService:
    cfg = ctx.settings
    core = SubscribeCore(status=cfg.subscribe_response, window=cfg.discovery_window,
                         rate=cfg.sip_rate, burst=cfg.sip_burst, contact_port=cfg.sip_port,
                         cache_bytes=cfg.sip_cache_bytes)
    return ListenerService(ctx, core).start()
