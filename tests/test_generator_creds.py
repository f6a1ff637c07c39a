"""Each device's HTTP credential in the generator's core: made once and kept (across restarts and a
rebuilt store), carried in the config's ``auth`` with ``enrol``, written into the files as the
vendor's config-server settings, and replaced by the ``rearm`` and ``rotate`` commands once per id
(a replay does nothing)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from generator.engine import Acted, Engine, Publish, Refused
from generator.render import Renderer
from generator.store import Credential, Store
from services.messages import Config

MAC = "000b82f55284"
PUBLIC = "http://pbx.example.com:8080/"
ASSIGNMENT = {"vendor": "grandstream", "model": "GRP2614",
              "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}


def engine_at(path: Path, public_url: str | None = PUBLIC) -> Engine:
    engine = Engine(Renderer(), Store(path / "generator.db"), public_url)
    engine.ready = True
    return engine


def assign(engine: Engine, doc: dict, mac: str = MAC) -> list[Any]:
    raw = json.dumps(doc).encode()
    return engine.assignment(mac, raw, json.loads(raw), None)


def command(engine: Engine, kind: str, payload: Any, mac: str = MAC) -> list[Any]:
    if isinstance(payload, dict) and "id" in payload and "at" not in payload:
        payload = {**payload, "at": "2026-12-07T03:00:00.000Z", "v": 1}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        data, error = json.loads(raw), None
    except ValueError as exc:
        data, error = None, str(exc)
    return engine.command(kind, mac, raw, data, error)


def configs(effects: list[Any]) -> list[Config]:
    return [Config.from_json(e.config.to_json()) for e in effects if isinstance(e, Publish)]


def p_values(config: Config) -> dict[str, str]:
    return dict(re.findall(r"<(P[0-9]+)>([^<]*)</P[0-9]+>", config.files[0].content))


def test_first_rendering_makes_the_credential_and_writes_it_into_the_file(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    (config,) = configs(assign(engine, ASSIGNMENT))
    assert config.auth is not None and config.enrol is not None
    assert (config.auth.user, config.auth.previous, config.auth.rotate) == (MAC, None, "")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", config.auth.password)
    assert re.fullmatch(r"[0-9a-f]{16}", config.enrol.assignment) and config.enrol.rearm == ""
    p = p_values(config)
    # our credentialed route, over the URL's scheme, and DHCP may not move the phone elsewhere
    assert (p["P237"], p["P212"], p["P145"]) == ("pbx.example.com:8080/c", "1", "0")
    assert (p["P1360"], p["P1361"]) == (MAC, config.auth.password)
    # the wire form: what the fileserver reads
    wire = json.loads(config.to_json())
    assert wire["auth"] == {"user": MAC, "password": config.auth.password, "previous": None, "rotate": ""}
    assert wire["enrol"] == {"assignment": config.enrol.assignment, "rearm": ""}


def test_passwords_differ_per_device_and_survive_a_restart(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    (first,) = configs(assign(engine, ASSIGNMENT))
    (other,) = configs(assign(engine, ASSIGNMENT, mac="000b82f55285"))
    assert first.auth and other.auth and first.auth.password != other.auth.password
    engine.store.commit()
    engine.store.close()
    again = engine_at(tmp_path)
    (after,) = configs(assign(again, ASSIGNMENT))
    assert after.auth == first.auth and after.revision == first.revision
    assert after.files[0].sha256 == first.files[0].sha256


def test_a_profile_change_is_a_new_file_but_not_a_new_enrolment(tmp_path: Path) -> None:
    """Codecs changed for the whole fleet must not reopen every provisioned phone's bootstrap
    URL: the phones get the change by check-sync with their own credentials."""
    engine = engine_at(tmp_path)
    raw = json.dumps({"ntp_server": "ntp1.example.com"}).encode()
    engine.profile("office", raw, json.loads(raw), None)
    (first,) = configs(assign(engine, {**ASSIGNMENT, "profile": "office"}))
    raw = json.dumps({"ntp_server": "ntp2.example.com"}).encode()
    macs = engine.profile("office", raw, json.loads(raw), None)
    assert macs == [MAC]
    (changed,) = configs(engine.render(MAC))
    assert changed.revision > first.revision
    assert changed.enrol == first.enrol


def test_enrol_assignment_names_the_assignment_not_its_spelling(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    (first,) = configs(assign(engine, ASSIGNMENT))
    reordered = dict(reversed(list(ASSIGNMENT.items())))
    assert configs(assign(engine, reordered)) == []  # same assignment: nothing new
    (changed,) = configs(assign(engine, {**ASSIGNMENT, "ntp_server": "ntp.example.com"}))
    assert first.enrol and changed.enrol and changed.enrol.assignment != first.enrol.assignment
    assert changed.auth == first.auth  # a changed assignment keeps the credential


def test_rotate_keeps_the_old_password_as_previous_and_acts_once_per_id(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    (first,) = configs(assign(engine, ASSIGNMENT))
    effects = command(engine, "rotate", {"id": "r1", "at": "2026-12-07T03:00:00.000Z", "v": 1})
    assert Acted(MAC, "rotate", "r1") in effects
    (rotated,) = configs(effects)
    assert first.auth and rotated.auth and rotated.enrol and first.enrol
    assert rotated.auth.previous == first.auth.password and rotated.auth.password != first.auth.password
    assert rotated.auth.rotate == "r1" and rotated.revision == first.revision + 1
    assert rotated.enrol == first.enrol  # a routine rotation opens no enrolment epoch
    assert p_values(rotated)["P1361"] == rotated.auth.password
    assert command(engine, "rotate", {"id": "r1"}) == []  # a replay does nothing
    (second,) = configs(command(engine, "rotate", {"id": "r2"}))
    assert second.auth and second.auth.previous == rotated.auth.password


def test_rearm_forgets_the_old_password_at_once_and_acts_once_per_id(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    assign(engine, ASSIGNMENT)
    (rotated,) = configs(command(engine, "rotate", {"id": "r1"}))
    (rearmed,) = configs(command(engine, "rearm", {"id": "a1"}))
    assert rotated.auth and rearmed.auth and rearmed.enrol
    assert rearmed.auth.password not in (rotated.auth.password, rotated.auth.previous)
    assert rearmed.auth.previous is None and rearmed.enrol.rearm == "a1"
    assert rearmed.auth.rotate == "r1"  # the last rotate stays acted on
    assert command(engine, "rearm", {"id": "a1"}) == []
    assert command(engine, "rotate", {"id": "r1"}) == []  # the retained rotate is still old news


def test_a_rearm_publishes_even_when_the_files_do_not_change(tmp_path: Path) -> None:
    """With the assignment's own config server no credential of ours is in the files: the new
    enrolment epoch must still reach the fileserver."""
    engine = engine_at(tmp_path)
    own = {**ASSIGNMENT, "provisioning": {"config_server": "https://prov.example.com/cfg"}}
    (first,) = configs(assign(engine, own))
    p = p_values(first)
    assert p["P237"] == "prov.example.com/cfg" and "P1360" not in p and "P1361" not in p
    (rearmed,) = configs(command(engine, "rearm", {"id": "a1"}))
    assert rearmed.revision == first.revision and rearmed.files == first.files
    assert rearmed.enrol and rearmed.enrol.rearm == "a1"


def test_commands_before_ready_wait_and_a_stored_id_is_not_acted_on_again(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    assign(engine, ASSIGNMENT)
    command(engine, "rotate", {"id": "r1"})
    password = engine.credentials[MAC].password
    engine.store.commit()
    engine.store.close()
    restarted = Engine(Renderer(), Store(tmp_path / "generator.db"), PUBLIC)
    assert command(restarted, "rotate", {"id": "r1"}) == []  # retained replay before ready
    assert command(restarted, "rearm", {"id": "a1"}) == []
    restarted.ready = True
    effects = restarted.act_pending()
    assert effects == [Acted(MAC, "rearm", "a1")]  # the rotate was old news; no rendering yet
    assert restarted.credentials[MAC].password != password


@pytest.mark.parametrize("payload,words", [
    (b"{bad", "not usable"), (b"[1]", "must be a JSON object"), ({"at": "x"}, "id is missing"),
    (b'{"id": "a"}', "at is missing"),
    ({"id": ""}, "id is empty"), ({"id": 7}, "id must be a string"), ({"id": "x" * 201}, "longer than 200"),
])
def test_a_bad_command_is_refused_and_changes_nothing(tmp_path: Path, payload: Any, words: str) -> None:
    engine = engine_at(tmp_path)
    assign(engine, ASSIGNMENT)
    before = engine.credentials[MAC]
    (refused,) = command(engine, "rearm", payload)
    assert isinstance(refused, Refused) and words in refused.message and "rearm" in refused.message
    assert engine.credentials[MAC] == before
    assert command(engine, "rearm", b"") == []  # clearing a retained command: nothing to do
    (wrong,) = command(engine, "rearm", {"id": "a"}, mac="000B82F55284")  # not a topic MAC
    assert isinstance(wrong, Refused) and "000b82f55284" in wrong.message


def test_a_command_for_a_device_not_yet_assigned_is_kept_for_its_first_rendering(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    assert command(engine, "rearm", {"id": "a1"}) == [Acted(MAC, "rearm", "a1")]
    (config,) = configs(assign(engine, ASSIGNMENT))
    assert config.enrol and config.enrol.rearm == "a1" and config.auth
    assert config.auth.password == engine.credentials[MAC].password


def test_recovered_credential_is_kept_and_never_replaced(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    recovered = Credential("K" * 32, "P" * 32, "a1", "r1")
    engine.recover_credential(MAC, recovered)
    engine.recover_credential(MAC, Credential("other" * 8))
    (config,) = configs(assign(engine, ASSIGNMENT))
    assert config.auth and config.enrol
    assert (config.auth.password, config.auth.previous, config.auth.rotate, config.enrol.rearm) == (
        "K" * 32, "P" * 32, "r1", "a1")
    assert command(engine, "rotate", {"id": "r1"}) == [] and command(engine, "rearm", {"id": "a1"}) == []


def test_without_a_public_url_no_server_is_written(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, public_url=None)
    (config,) = configs(assign(engine, ASSIGNMENT))
    assert "P237" not in p_values(config) and "P1361" not in p_values(config)
    assert config.auth is not None  # the fileserver may still check it
