"""fileserver/files.py: a config payload decoded into files, or rejected naming the field."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from fileserver.files import Rejected, decode_config

MAC = "000b82f55284"


def payload(text="hello", **over):
    body = text.encode()
    f = {"name": "cfg.xml", "content_type": "application/xml", "content": text, "encoding": "utf-8",
         "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    f.update(over.pop("file", {}))
    return {"files": [f], "revision": 1, "template": "t", **over}


def test_config_decodes_utf8_and_base64():
    d = decode_config(MAC, payload())
    assert d.files["cfg.xml"].body == b"hello"
    raw = bytes(range(256))
    b64 = payload(file={"content": base64.b64encode(raw).decode(), "encoding": "base64",
                        "sha256": hashlib.sha256(raw).hexdigest(), "size": 256})
    assert decode_config(MAC, b64).files["cfg.xml"].body == raw


@pytest.mark.parametrize("over,field", [
    ({"file": {"sha256": "0" * 64}}, "files[0].sha256"),
    ({"file": {"size": 4}}, "files[0].size"),
    ({"file": {"name": "../x"}}, "files[0].name"),
    ({"file": {"name": "a/b"}}, "files[0].name"),
    ({"file": {"encoding": "latin-1"}}, "files[0].encoding"),
    ({"file": {"encoding": "base64", "content": "!!"}}, "files[0].content"),
    ({"file": {"content_type": "text/xml\r\nX-Evil: 1"}}, "files[0].content_type"),
    ({"notify_path": "../x"}, "notify_path"),
    ({"notify_path": "/abs"}, "notify_path"),
    ({"notify_path": "a b"}, "notify_path"),
    ({"mac": "000b82aabbcc"}, "mac"),
])
def test_bad_configs_are_rejected_naming_the_field(over, field):
    with pytest.raises(Rejected) as exc:
        decode_config(MAC, payload(**over))
    assert exc.value.field == field


def test_payload_errors_are_rejected_not_raised():
    for bad in (None, 3, [1], "null"):
        with pytest.raises(Rejected):
            decode_config(MAC, bad)
    for bad in ({}, {"files": "x", "revision": 1, "template": "t"}, {"files": [], "revision": 1, "template": "t"},
                {"files": [{"name": 1}], "revision": 1, "template": "t"}, [], "x"):
        with pytest.raises(Rejected):
            decode_config(MAC, bad if isinstance(bad, dict) else json.dumps(bad).encode())
