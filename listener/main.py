"""Listener: answers the phones' multicast SUBSCRIBE and publishes what they are."""

from listener.service import ListenerService
from listener.settings import LISTENER
from services import settings as s
from services.runner import Context

SETTINGS = [s.SIP_INTERFACE, s.SIP_PORT, *LISTENER]


def start(ctx: Context) -> ListenerService:
    return ListenerService(ctx).start()
