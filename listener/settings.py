"""The listener's settings: ``SETTINGS``, every one it reads besides the common ones."""

from __future__ import annotations

from services.settings import (
    SIP_INTERFACE, SIP_PORT, Setting, parse_choice, parse_positive_float, parse_whole,
)


def _parse_response(text: str) -> int:
    return int(parse_choice("200", "202")(text))


SUBSCRIBE_RESPONSE = Setting(
    "subscribe_response", "PNP_SUBSCRIBE_RESPONSE",
    "status answering a ua-profile SUBSCRIBE (200 per RFC 6665; 202 as some PBXs do)",
    _parse_response, "200 or 202", 200,
)
DISCOVERY_WINDOW = Setting(
    "discovery_window", "PNP_DISCOVERY_WINDOW",
    "seconds during which further SUBSCRIBEs of a just-discovered MAC from the same IP count as the same boot",
    parse_positive_float, "a number of seconds > 0", 30.0,
)
SIP_RATE = Setting(
    "sip_rate", "PNP_SIP_RATE", "datagrams per second accepted from one source address",
    parse_positive_float, "a number > 0", 20.0,
)
SIP_BURST = Setting(
    "sip_burst", "PNP_SIP_BURST", "datagrams one source may send at once before its rate applies",
    parse_positive_float, "a number > 0", 40.0,
)
PUBLISH_WINDOW = Setting(
    "publish_window", "PNP_PUBLISH_WINDOW",
    "discoveries sent to the broker and not yet acknowledged, at most (raise it for a distant broker)",
    parse_whole(1, 10_000), "a whole number 1-10000", 16,
)
SIP_CACHE_BYTES = Setting(
    "sip_cache_bytes", "PNP_SIP_CACHE_BYTES",
    "bytes the listener's memory of recent answers and boots may take (oldest forgotten first)",
    parse_whole(1 << 20, 1 << 36), "a whole number of bytes 1048576-68719476736", 64 << 20,
)
DISCOVERY_TTL = Setting(
    "discovery_ttl", "PNP_DISCOVERY_TTL",
    "seconds the broker keeps the discovery of a MAC we never served files to (0: for ever)",
    parse_whole(0, 10 * 365 * 86400), "a whole number of seconds (0: never expire)", 7 * 86400,
)

SETTINGS = [SIP_INTERFACE, SIP_PORT, SUBSCRIBE_RESPONSE, DISCOVERY_WINDOW, SIP_RATE, SIP_BURST,
            PUBLISH_WINDOW, SIP_CACHE_BYTES, DISCOVERY_TTL]
