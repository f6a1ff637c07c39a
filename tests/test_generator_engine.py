"""The generator's core on a discovery: a pre-staged phone booting as what it was staged as is
not rendered again (issue 15: that render sat on the discovery's path and published nothing);
any other discovery still renders as before."""

from __future__ import annotations

import json
from pathlib import Path

from generator.engine import Engine, Publish
from generator.render import Renderer
from generator.store import Store

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
