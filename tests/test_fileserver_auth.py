"""fileserver/auth.py: HTTP Basic and Digest credentials."""

from __future__ import annotations

import base64

from fileserver.auth import Authenticator


def test_basic_credentials():
    a = Authenticator("basic", "u", "p:w")
    ok = b"Basic " + base64.b64encode(b"u:p:w")
    assert a.check(ok, b"GET", b"/x", "1.2.3.4")
    for bad in (None, b"", b"Basic", b"Basic !!!", b"Basic " + base64.b64encode(b"u:p"),
                b"Basic " + base64.b64encode(b"up:w"), b"Digest " + base64.b64encode(b"u:p:w"),
                b"Basic " + base64.b64encode(b"\xff\xfe")):
        assert not a.check(bad, b"GET", b"/x", "1.2.3.4")


def test_digest_rejects_garbage():
    a = Authenticator("digest", "u", "p")
    assert a.challenge("1.2.3.4").startswith('Digest realm="pnp", qop="auth"')
    for bad in (b"Digest", b"Digest username=u", b'Digest username="u", nonce="1", opaque="zz"',
                b"Digest \x00\x01", b"Basic dTpw"):
        assert not a.check(bad, b"GET", b"/x", "1.2.3.4")
