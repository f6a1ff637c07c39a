"""The generator's core on a discovery: a pre-staged phone booting as what it was staged as is
not rendered again (issue 15: that render sat on the discovery's path and published nothing);
any other discovery still renders as before. A device that waits for its phone (first boot)
has what does not depend on the phone ready beforehand, and still renders what is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.engine import Engine, Publish, assignment_digest, config_json
from generator.render import Renderer
from generator.store import Store
from services.messages import Config

MAC = "000b82f55284"
STAGED = {"vendor": "grandstream", "model": "GRP2614",
          "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}


def staged_engine(tmp_path: Path, assignment: dict = STAGED) -> Engine:
    engine = Engine(Renderer(), Store(tmp_path / "generator.db"))
    engine.ready = True
    effects = engine.assignment(MAC, json.dumps(assignment).encode(), assignment, None)
    assert [type(e) for e in effects][:1] == [Publish]
    return engine


def discovery(vendor: str, model: str, firmware: str = "1.0.0.31") -> dict:
    return {"mac": MAC, "vendor": vendor, "model": model, "firmware": firmware}


def test_a_prestaged_phone_booting_as_staged_is_not_rendered_again(tmp_path: Path) -> None:
    engine = staged_engine(tmp_path)
    renders = engine.stats.renders
    # the listener's spelling, not the assignment's: the same family and canonical model
    assert engine.discovered(MAC, discovery("Grandstream", "grp2614")) == []
    assert (engine.stats.renders, engine.stats.skipped) == (renders, 1)
    # a later boot with new firmware only: no render either (as before this short-cut)
    assert engine.discovered(MAC, discovery("grandstream", "GRP2614", "1.0.0.40")) == []
    assert engine.stats.renders == renders


def test_a_phone_booting_as_another_model_is_rendered(tmp_path: Path) -> None:
    engine = staged_engine(tmp_path)
    effects = engine.discovered(MAC, discovery("grandstream", "GRP2612"))
    (publish,) = [e for e in effects if isinstance(e, Publish)]
    assert (publish.config.model, publish.config.revision, engine.stats.skipped) == ("GRP2612", 2, 0)
    # and back to the staged model: a render again, since the published one is the GRP2612's
    effects = engine.discovered(MAC, discovery("grandstream", "GRP2614"))
    (publish,) = [e for e in effects if isinstance(e, Publish)]
    assert (publish.config.model, publish.config.revision) == ("GRP2614", 3)


def test_an_unnamed_or_unknown_phone_still_goes_through_the_render(tmp_path: Path) -> None:
    engine = staged_engine(tmp_path)
    renders = engine.stats.renders
    # unnamed: the render takes the staged model, the same bytes: nothing published
    assert engine.discovered(MAC, discovery("unknown", "")) == []
    assert (engine.stats.renders, engine.stats.skipped) == (renders + 1, 0)
    # a model without a template: the render's error, as before
    effects = engine.discovered(MAC, discovery("grandstream", "GXP9999"))
    assert [type(e).__name__ for e in effects] == ["Error"]


def test_a_device_whose_last_render_failed_is_rendered_on_its_discovery(tmp_path: Path) -> None:
    engine = staged_engine(tmp_path)
    # a new assignment names a profile that does not exist: its render fails, the error stands
    broken = {**STAGED, "profile": "office"}
    effects = engine.assignment(MAC, json.dumps(broken).encode(), broken, None)
    assert [type(e).__name__ for e in effects] == ["Error"]
    effects = engine.discovered(MAC, discovery("grandstream", "GRP2614"))
    assert [type(e).__name__ for e in effects] == ["Error"] and engine.stats.skipped == 0


# --- a device that waits for its phone (first boot) --------------------------------------------

BARE = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret"}]}


def waiting_engine(tmp_path: Path, public_url: str | None = "http://pbx.example.com:8080/") -> Engine:
    engine = Engine(Renderer(), Store(tmp_path / "generator.db"), public_url)
    engine.ready = True
    engine.profile("default", b'{"ntp_server": "ntp.one"}', {"ntp_server": "ntp.one"}, None)
    assert engine.assignment(MAC, json.dumps(BARE).encode(), BARE, None) == []  # no model yet
    return engine


def published(effects: list) -> Config:
    (publish,) = [e for e in effects if isinstance(e, Publish)]
    return Config.from_json(config_json(publish.config))


def test_a_waiting_device_has_its_credential_before_its_phone_boots(tmp_path: Path) -> None:
    """Made (and committed by the next batched commit) while nobody waits, so the phone's first
    boot renders with it and needs no commit of its own."""
    engine = waiting_engine(tmp_path)
    password = engine.credentials[MAC].password
    assert engine.unsaved_credential(MAC)
    engine.store.commit()
    engine.credentials_committed()
    config = published(engine.discovered(MAC, discovery("grandstream", "GRP2614")))
    assert config.auth is not None and config.auth.password == password
    assert f"<P1361>{password}</P1361>" in config.files[0].content
    assert not engine.unsaved_credential(MAC)


def test_a_profile_changed_while_the_device_waits_is_in_its_first_render(tmp_path: Path) -> None:
    engine = waiting_engine(tmp_path)
    engine.profile("default", b'{"ntp_server": "ntp.two"}', {"ntp_server": "ntp.two"}, None)
    config = published(engine.discovered(MAC, discovery("grandstream", "GRP2614")))
    assert "<P30>ntp.two</P30>" in config.files[0].content


def test_an_assignment_changed_while_the_device_waits_is_in_its_first_render(tmp_path: Path) -> None:
    engine = waiting_engine(tmp_path)
    changed = {"accounts": [{**BARE["accounts"][0], "user_id": "2002"}]}
    assert engine.assignment(MAC, json.dumps(changed).encode(), changed, None) == []
    config = published(engine.discovered(MAC, discovery("grandstream", "GRP2614")))
    assert "<P35>2002</P35>" in config.files[0].content
    assert config.enrol is not None and config.enrol.assignment == assignment_digest(changed)
    # and a profile that the new assignment names but that does not exist: its error, not a render
    named = {**changed, "profile": "office"}
    engine.assignment(MAC, json.dumps(named).encode(), named, None)
    effects = engine.discovered(MAC, discovery("grandstream", "GRP2612"))
    assert [type(e).__name__ for e in effects] == ["Error"]


@pytest.mark.parametrize("auth", [True, False])
def test_the_config_payload_is_the_contracts_bytes(tmp_path: Path, auth: bool) -> None:
    """The generator's own encoding of a config is byte for byte Config.to_json (the fileserver
    and the console read it; the keeper's fingerprint compares it)."""
    engine = waiting_engine(tmp_path)
    accented = {"accounts": [{**BARE["accounts"][0], "display_name": "Zoë \"<&>\" 東京"}],
                "vendor": "yealink", "model": "T46S"}
    (publish,) = [e for e in engine.assignment(MAC, json.dumps(accented).encode(), accented, None)
                  if isinstance(e, Publish)]
    config = publish.config
    if not auth:
        config = Config(files=config.files, revision=config.revision, template=config.template)
    assert len(config.files) == 2 and (config.auth is not None) == auth
    assert config_json(config) == config.to_json()
