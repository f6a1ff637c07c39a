"""tools/commands.py: the re-arm and rotate commands, and how their outcome is read (sans-I/O).

The same commands over a real broker, as a user gives them: tests/test_assign.py."""

from __future__ import annotations

import json

import pytest

from services.messages import Command
from services.topics import Topics
from tools.commands import Order, Outcomes, enrolment_words, message, when

MAC = "000b82f55284"
OTHER = "001565000002"
ENROLLING = {"state": "enrolling", "epoch": 2, "since": "2026-12-07T03:00:00.000Z",
             "until": "2026-12-10T03:00:00.000Z", "bound": None, "candidate": None, "reason": "assignment",
             "mac": MAC, "at": "2026-12-07T03:00:00.000Z", "v": 1}


def test_a_command_is_a_retained_message_with_a_fresh_id_each_time():
    a, b = Order.new(MAC, "rearm"), Order.new(MAC, "rearm")
    assert a.id != b.id and len(a.id) == 32 and int(a.id, 16) >= 0  # uuid4 hex
    topic, payload = message(Topics("site1"), a, at="2026-12-07T03:00:00.000Z")
    assert topic == f"site1/devices/{MAC}/rearm"
    assert json.loads(payload) == {"id": a.id, "at": "2026-12-07T03:00:00.000Z", "v": 1}
    assert Command.from_json(payload).id == a.id  # what the generator reads
    assert message(Topics(), Order.new(MAC, "rotate"))[0] == f"pnp/devices/{MAC}/rotate"
    with pytest.raises(ValueError):
        Order.new(MAC, "assignment")


def test_the_enrolment_payload_in_words():
    assert enrolment_words(ENROLLING) == ("enrolling", "enrolling until 2026-12-10T03:00Z (epoch 2)")
    assert enrolment_words({**ENROLLING, "candidate": "10.0.0.5"})[1] == (
        "enrolling until 2026-12-10T03:00Z, first seen at 10.0.0.5 (epoch 2)")
    assert enrolment_words({**ENROLLING, "candidate": "10.0.0.5", "bound": "10.0.0.6"})[1] == (
        "enrolling until 2026-12-10T03:00Z, bound to 10.0.0.6 (epoch 2)")
    assert enrolment_words({**ENROLLING, "state": "provisioned", "bound": "10.0.0.5"}) == (
        "provisioned", "provisioned at 10.0.0.5 (epoch 2)")
    assert enrolment_words({**ENROLLING, "state": "conflict", "addresses": ["10.0.0.5", "10.0.0.9"]}) == (
        "conflict", "conflict 10.0.0.5 and 10.0.0.9 (epoch 2)")
    assert enrolment_words({**ENROLLING, "state": "expired"})[1] == (
        "expired 2026-12-10T03:00Z: not provisioned in time (epoch 2)")
    many = enrolment_words({"state": "conflict", "addresses": [f"10.0.0.{i}" for i in range(200)]})[1]
    assert many == "conflict 10.0.0.0 and 10.0.0.1 (+198 more)"
    assert when(0) == "1970-01-01T00:00Z" and when(None) == "?" and when("soon") == "soon"


@pytest.mark.parametrize("junk", [None, [], "x", 5, {}, {"state": 7, "epoch": "2", "addresses": "a"},
                                  {"state": "conflict", "addresses": [1, None]}, {"until": 1e300}])
def test_any_enrolment_payload_gives_words_not_an_exception(junk):
    state, words = enrolment_words(junk)
    assert isinstance(state, str) and isinstance(words, str)


def feed(outcomes: Outcomes, mac: str, kind: str, data, retained: bool) -> None:
    outcomes.seen(mac, kind, data, retained)


def test_a_re_arm_is_done_when_a_newer_epoch_arrives_enrolling():
    o = Outcomes([Order.new(MAC, "rearm")])
    assert set(o.watched(Topics())) == {f"pnp/devices/{MAC}/{k}" for k in ("enrolment", "error", "assignment")}
    feed(o, MAC, "assignment", {"accounts": []}, True)
    feed(o, MAC, "enrolment", {**ENROLLING, "state": "conflict", "addresses": ["a", "b"]}, True)  # before
    feed(o, MAC, "enrolment", {**ENROLLING, "state": "conflict"}, False)  # the same epoch again: not it
    feed(o, MAC, "error", None, False)  # the fileserver clearing its conflict error: not an answer
    feed(o, MAC, "error", {"service": "fileserver", "code": "conflict", "message": "m"}, False)
    assert o.done == {}
    feed(o, MAC, "enrolment", {**ENROLLING, "epoch": 3}, False)
    assert o.done[MAC] == (True, "re-armed: enrolling until 2026-12-10T03:00Z (epoch 3)")


def test_a_first_enrolment_counts_from_epoch_zero_and_a_generator_error_is_a_failure():
    o = Outcomes([Order.new(MAC, "rearm"), Order.new(OTHER, "rearm")])
    feed(o, MAC, "enrolment", {**ENROLLING, "epoch": 1}, False)
    feed(o, OTHER, "error", {"service": "generator", "code": "unassigned", "message": "no assignment"}, False)
    assert o.done == {MAC: (True, "re-armed: enrolling until 2026-12-10T03:00Z (epoch 1)"),
                      OTHER: (False, "error unassigned: no assignment")}


def test_a_rotation_is_done_when_files_carry_a_newer_revision():
    o = Outcomes([Order.new(MAC, "rotate")])
    files = {"revision": 4, "files": [{"name": f"cfg{MAC}.xml", "sha256": "ab", "size": 9}]}
    feed(o, MAC, "files", files, True)
    feed(o, MAC, "files", files, False)  # the same revision once more (a restored retained message)
    feed(o, MAC, "enrolment", {**ENROLLING, "epoch": 9}, False)  # not what a rotation waits for
    assert o.done == {}
    assert "no assignment is retained" in o.missing(MAC, 2)
    feed(o, MAC, "assignment", {}, True)
    assert "config_server" in o.missing(MAC, 2)
    feed(o, MAC, "files", {**files, "revision": 5}, False)
    assert o.done[MAC] == (True, f"new credential in revision 5 (cfg{MAC}.xml)")
    withdrawn = Outcomes([Order.new(MAC, "rotate")])
    feed(withdrawn, MAC, "files", None, False)
    assert withdrawn.done[MAC][0] is False


def test_messages_of_other_devices_or_hostile_payloads_decide_nothing():
    o = Outcomes([Order.new(MAC, "rearm")])
    for data in (None, [], "x", {"epoch": "9"}, {"epoch": True}, {"_error": "not JSON"}):
        feed(o, MAC, "enrolment", data, False)
        feed(o, OTHER, "enrolment", {**ENROLLING, "epoch": 7}, False)
    assert o.done == {}
