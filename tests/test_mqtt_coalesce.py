"""Joining paho's queued packets into few sends (services/mqtt/coalesce.py)."""

from __future__ import annotations

from collections import deque

from services.mqtt import coalesce as coalesce_module
from services.mqtt.coalesce import coalesce


def test_packets_of_one_turn_go_out_joined_except_those_paho_must_see_finish():
    class Client:
        _out_packet: deque = deque()

    def packet(command: int, data: bytes, qos: int = 1, pos: int = 0) -> dict:
        return {"command": command, "mid": 1, "qos": qos, "pos": pos, "to_process": len(data) - pos,
                "packet": data, "info": None}

    client = Client()
    partly_sent = packet(0x32, b"half-sent", pos=4)
    qos0 = packet(0x30, b"qos0", qos=0)
    client._out_packet = deque([partly_sent, packet(0x40, b"ack1"), packet(0x32, b"pub1"),
                                packet(0x40, b"ack2"), qos0, packet(0x40, b"ack3"),
                                packet(0xE0, b"bye")])
    coalesce(client)
    sent = list(client._out_packet)
    assert sent[0] is partly_sent and sent[2] is qos0 and sent[3]["packet"] == b"ack3"
    assert sent[1]["packet"] == b"ack1pub1ack2" and sent[1]["to_process"] == 12
    assert sent[4]["packet"] == b"bye" and len(sent) == 5
    # the bytes on the wire, in order, are the same
    assert b"".join(p["packet"][p["pos"]:] for p in sent) == b"-sentack1pub1ack2qos0ack3bye"


def test_an_unknown_paho_send_queue_turns_joining_off_instead_of_breaking_writes(monkeypatch):
    monkeypatch.setattr(coalesce_module, "_coalescing", True)

    class Client:
        _out_packet = deque([{"cmd": 0x40, "data": b"a"}, {"cmd": 0x40, "data": b"b"}])

    client = Client()
    coalesce_module.coalesce(client)  # must not raise: the write that follows still happens
    assert list(client._out_packet) == [{"cmd": 0x40, "data": b"a"}, {"cmd": 0x40, "data": b"b"}]
    assert coalesce_module._coalescing is False
