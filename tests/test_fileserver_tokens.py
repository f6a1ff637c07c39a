"""fileserver/tokens.py: per-device URL tokens and the secret they come from."""

from __future__ import annotations

import os

from fileserver import paths
from fileserver.tokens import device_token, load_or_create_secret

MAC = "000b82f55284"


def test_tokens_are_stable_per_mac_and_rotate_with_the_secret(tmp_path):
    secret = load_or_create_secret(tmp_path / "s")
    assert load_or_create_secret(tmp_path / "s") == secret
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o600
    t = device_token(secret, MAC, 1)
    assert t == device_token(secret, MAC, 1) and len(t) == 22
    assert t != device_token(secret, "000b82aabbcc", 1)
    assert t != device_token(secret + "x", MAC, 1)
    # a new enrolment epoch: a new URL, the old one dead
    assert t != device_token(secret, MAC, 2)
    assert paths.route(f"/p/{t}/f.xml".encode()).token == t
