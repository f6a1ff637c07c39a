"""The MQTT kernel every service and tool shares: one module per job.

- ``incoming``: :class:`Incoming`, the message a handler receives;
- ``matching``: :class:`TopicFilter`, MQTT topic-filter matching;
- ``client``: :func:`make_client`, a paho client for a broker URL (login, TLS);
- ``connect``: the non-blocking TCP connect and the reactor's adapter for paho's socket;
- ``coalesce``: the joining of paho's queued packets into few sends;
- ``paho_internals``: every use of paho's private attributes, and nothing else;
- ``bus``: :class:`Bus`, one reconnecting connection driven by the reactor.
"""

from services.mqtt.bus import Bus
from services.mqtt.client import make_client
from services.mqtt.incoming import Handler, Incoming
from services.mqtt.matching import TopicFilter

__all__ = ["Bus", "Handler", "Incoming", "TopicFilter", "make_client"]
