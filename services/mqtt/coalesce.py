"""The packet-joining hack: one ``send`` for the packets paho queued in one reactor turn.

paho sends each queued packet with its own ``send`` (a syscall per PUBACK and per publish, a
tenth of a busy notifier's CPU). Measured in docs/BENCHMARKS.md ("Joined MQTT writes").
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from services.mqtt.paho_internals import send_queue, sent_once_packet

log = Logger(namespace="bus")

_PUBLISH, _DISCONNECT = 0x30, 0xE0
COALESCE_MAX = 64 * 1024  # bytes joined into one send

_coalescing = True


def coalesce(client: Any) -> None:
    """:func:`join_packets`, switched off for good (and said once) if paho's private send
    queue ever changes shape: then every packet simply goes out on its own, as paho sends it."""
    global _coalescing
    if not _coalescing:
        return
    try:
        join_packets(client)
    except (KeyError, TypeError, AttributeError) as exc:
        _coalescing = False
        log.warn("paho's send queue is not what this bus knows ({error}); sending packets one "
                 "by one", error=repr(exc))


def join_packets(client: Any) -> None:
    """Join the packets paho queued into few buffers. Only packets whose end paho ignores are
    joined (QoS 1 publishes, PUBACKs, subscriptions...); a QoS 0 publish (paho reports its
    sending) or a DISCONNECT (paho closes after it) stays whole. A joined buffer is marked as a
    PUBACK, which paho forgets once sent; a lost connection drops it like the packets it holds,
    and paho resends QoS 1 from its own store on reconnect."""
    queue = send_queue(client)
    if queue is None or len(queue) < 2:
        return
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    size = 0

    def close_run() -> None:
        nonlocal size
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(sent_once_packet(b"".join(p["packet"] for p in run)))
        run.clear()
        size = 0

    for packet in queue:
        command = packet["command"] & 0xF0
        plain = (packet["pos"] == 0 and command != _DISCONNECT
                 and not (command == _PUBLISH and packet["qos"] == 0))
        if not plain:
            close_run()
            out.append(packet)
            continue
        if size + packet["to_process"] > COALESCE_MAX:
            close_run()
        run.append(packet)
        size += packet["to_process"]
    close_run()
    if len(out) < len(queue):
        queue.clear()
        queue.extend(out)
