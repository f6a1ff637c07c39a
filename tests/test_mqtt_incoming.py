"""The received-message type (services/mqtt/incoming.py)."""

from __future__ import annotations

from services.mqtt import Incoming
from services.mqtt import incoming as incoming_module


def test_incoming_parses_its_payload_only_when_asked_and_keeps_given_values():
    lazy = Incoming("x/1", b'{"a":1}', False)
    assert lazy._data is incoming_module._UNPARSED  # nothing parsed until asked
    assert lazy.data == {"a": 1} and lazy.error is None
    bad = Incoming("x/2", b"{nope", False)
    assert bad.error is not None and "not JSON" in bad.error and bad.data is None
    empty = Incoming("x/3", b"", True)
    assert empty.empty and empty.data is None and empty.error is None
    given = Incoming("x/4", b"ignored", False, data={"b": 2})
    assert given.data == {"b": 2} and given.error is None
    given.error = "why"
    assert given.error == "why" and given == Incoming("x/4", b"ignored", False, {"b": 2}, "why")
