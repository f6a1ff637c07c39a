"""fileserver/etag.py: If-None-Match matching and the Repr-Digest header."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fileserver.etag import none_match, parse_if_none_match, repr_digest

SHA = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("value", [f'"{SHA}"', f'W/"{SHA}"', f'"a", W/"{SHA}"', f'"a",W/"b",  "{SHA}" ',
                                   "*", SHA, f'"{SHA.upper()}"'])
def test_if_none_match_matches(value):
    assert none_match([value], SHA)


@pytest.mark.parametrize("value", ['"a"', f'"{SHA[:-1]}"', "", ",,,", 'W/"', f'"{SHA}x"', "\x00"])
def test_if_none_match_does_not_match(value):
    assert not none_match([value], SHA)


def test_if_none_match_across_several_fields_and_garbage():
    assert none_match(['"a"', f'W/"{SHA}"'], SHA)
    assert parse_if_none_match('"a", "b"') == (False, ["a", "b"])
    assert parse_if_none_match(' * ') == (True, [])


def test_repr_digest_is_rfc9530_byte_sequence():
    assert repr_digest(SHA) == "sha-256=:" + base64.b64encode(hashlib.sha256(b"x").digest()).decode() + ":"
