"""The fileserver's sans-I/O parts: tag matching, path routing, User-Agent MACs, the 404
limiter, provisioning, config checks, tokens, credentials and settings."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from fileserver import paths
from fileserver.abuse import NotFoundLimiter, user_agent_mac
from fileserver.auth import Authenticator
from fileserver.etag import none_match, parse_if_none_match, repr_digest
from fileserver.files import Rejected, decode_config
from fileserver.provision import ProvisionTracker
from fileserver.settings import SETTINGS, check
from fileserver.tls import TlsError, context_factory
from tools.certs import make_pair
from fileserver.tokens import device_token, load_or_create_secret
from services import settings as s

SHA = hashlib.sha256(b"x").hexdigest()
MAC = "000b82f55284"


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


@pytest.mark.parametrize("target,kind", [
    (b"/p/AAAAAAAAAAAAAAAAAAAAAA/cfg000b82f55284.xml", "device"),
    (b"/p/AAAAAAAAAAAAAAAAAAAAAA/cfg000b82f55284.xml?x=1", "device"),
    (b"/cfg000b82f55284.xml", "plain"),
    (b"/healthz", "health"), (b"/metrics", "metrics"),
    (b"/", "none"), (b"/p/", "none"), (b"/p/AAAAAAAAAAAAAAAAAAAAAA/", "none"), (b"/p/short/cfg.xml", "none"),
])
def test_routes(target, kind):
    assert paths.route(target).kind == kind


@pytest.mark.parametrize("target", [b"/p/../etc/passwd", b"/a%2fb", b"/a%2Fb", b"/%2e%2e/x", b"/a\\b", b"//x",
                                    b"/x/./y", b"/" + b"a" * 2000, b"/a\x00", b"/\xff", b"*", b"http://h/x"])
def test_path_tricks_are_refused(target):
    with pytest.raises(paths.BadPath):
        paths.route(target)


def test_routes_under_a_public_url_prefix():
    assert paths.route(b"/pnp/p/AAAAAAAAAAAAAAAAAAAAAA/f.xml", "/pnp/").kind == "device"
    assert paths.route(b"/p/AAAAAAAAAAAAAAAAAAAAAA/f.xml", "/pnp/").kind == "none"


@pytest.mark.parametrize("ua,mac", [
    ("Grandstream Model HW GRP2614 SW 1.0.0.31 DevId 000b82f55284", MAC),
    ("Grandstream Model HW GRP2614 SW 1.0.0.31 DevId 000B82F55284", MAC),
    ("Yealink SIP-T46S 66.86.0.15 00:15:65:aa:bb:cc", "001565aabbcc"),
    ("snom-D785 10.1.54.13 000413AABBCC", "000413aabbcc"),
    ("Grandstream GRP2614 1.0.0.31", None), ("curl/8.0", None), ("", None),
    ("Firmware 1.2.3.456789012345", None),
])
def test_user_agent_mac(ua, mac):
    assert user_agent_mac(ua) == mac


def test_limiter_bans_after_limit_in_window_then_forgives():
    lim = NotFoundLimiter(limit=3, window=10, ban=60)
    assert not lim.not_found("a", 0) and not lim.not_found("a", 1)
    assert lim.refused("a", 1) == 0
    assert lim.not_found("a", 2)
    assert lim.refused("a", 3) == pytest.approx(59)
    assert lim.refused("b", 3) == 0
    assert lim.refused("a", 62.1) == 0
    # misses spread wider than the window never add up to a ban
    lim2 = NotFoundLimiter(limit=3, window=10, ban=60)
    assert not any(lim2.not_found("c", t) for t in range(0, 100, 6))


def test_limiter_memory_is_bounded():
    lim = NotFoundLimiter(limit=5, window=10, ban=60, max_clients=100)
    for i in range(1000):
        lim.not_found(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(lim._clients) == 100


def test_provisioned_after_a_200_and_the_same_sha_again():
    t = ProvisionTracker()
    assert not t.record(MAC, "f", 304, "a").provisioned  # no 200 yet
    assert not t.record(MAC, "f", 200, "a").provisioned
    assert t.record(MAC, "f", 304, "a").provisioned
    assert t.record(MAC, "f", 200, "a").provisioned
    assert not t.record(MAC, "f", 200, "b").provisioned  # new file
    out = t.record(MAC, "f", 200, "b")
    assert out.provisioned and out.changed
    assert not t.record(MAC, "f", 200, "b").changed  # nothing to save
    states = dict(t._states)
    assert ProvisionTracker(states).is_provisioned(MAC, "f", "b")  # survives a restart


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


def test_tokens_are_stable_per_mac_and_rotate_with_the_secret(tmp_path):
    secret = load_or_create_secret(tmp_path / "s")
    assert load_or_create_secret(tmp_path / "s") == secret
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o600
    t = device_token(secret, MAC)
    assert t == device_token(secret, MAC) and len(t) == 22
    assert t != device_token(secret, "000b82aabbcc")
    assert t != device_token(secret + "x", MAC)
    assert paths.route(f"/p/{t}/f.xml".encode()).token == t


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


def test_settings_that_only_work_together():
    base = {"tls_cert": "/c.pem"}
    with pytest.raises(s.SettingError, match="PNP_TLS_KEY"):
        check(s.resolve(SETTINGS, base, environ={}))
    with pytest.raises(s.SettingError, match="PNP_HTTP_USER"):
        check(s.resolve(SETTINGS, {"http_auth": "digest"}, environ={}))
    with pytest.raises(s.SettingError, match="PNP_FILE_SECRET"):
        s.resolve(SETTINGS, {"file_secret": "short"}, environ={})
    with pytest.raises(s.SettingError, match="PNP_HTTP_AUTH"):
        s.resolve(SETTINGS, {"http_auth": "ntlm"}, environ={})
    check(s.resolve(SETTINGS, {}, environ={}))


def test_tls_files_that_do_not_fit_say_why(tmp_path):
    cert, key = make_pair(["127.0.0.1"])
    _, other_key = make_pair(["127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    (tmp_path / "o.pem").write_bytes(other_key)
    context_factory(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(TlsError, match="not the key"):
        context_factory(tmp_path / "c.pem", tmp_path / "o.pem")
    with pytest.raises(TlsError, match="cannot read"):
        context_factory(tmp_path / "missing.pem", tmp_path / "k.pem")
    with pytest.raises(TlsError, match="no PEM certificate"):
        context_factory(tmp_path / "k.pem", tmp_path / "k.pem")
