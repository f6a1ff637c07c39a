"""Digest authentication, client side: known vectors (RFC 2617 §3.5, RFC 7616 §3.9.1), a SIP
NOTIFY computed here independently from the RFC formula with hashlib, and the §22.2 retry."""

from __future__ import annotations

import hashlib
import re

import pytest

from services.sip import digest
from services.sip.digest import Challenge, DigestError, parse_challenge
from services.sip.message import Headers, Request, Response, parse


def fields(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', value[7:])}


def test_rfc2617_example():
    # RFC 2617 §3.5: the server's challenge and the client's answer, byte for byte.
    c = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert (c.realm, c.algorithm, c.qop) == ("testrealm@host.com", "MD5", ("auth", "auth-int"))
    value = digest.authorization(c, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", cnonce="0a4f113b")
    f = fields(value)
    assert f["response"] == "6629fae49393a05397450978507c4ef1"
    assert (f["qop"], f["nc"], f["cnonce"], f["opaque"]) == ("auth", "00000001", "0a4f113b",
                                                             "5ccc069c403ebaf9f0171e9517f40e41")


@pytest.mark.parametrize("algorithm, expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_examples(algorithm, expected):
    c = parse_challenge(f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
                        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    response = digest.digest_response(c, "Mufasa", "Circle of Life", "GET", "/dir/index.html",
                                      cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert response == expected


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


CHALLENGE_401 = (b"SIP/2.0 401 Unauthorized\r\n"
                 b"Via: SIP/2.0/UDP 10.0.0.1:40417;branch=z9hG4bKfirst;rport=40417\r\n"
                 b"From: <sip:10.0.0.1:40417>;tag=abc\r\n"
                 b"To: <sip:10.0.0.7:5060>;tag=phone1\r\n"
                 b"Call-ID: cs-1@10.0.0.1\r\n"
                 b"CSeq: 1 NOTIFY\r\n"
                 b'WWW-Authenticate: Digest realm="Grandstream", nonce="4e2fa1b3", qop="auth", algorithm=MD5\r\n'
                 b"Content-Length: 0\r\n\r\n")


def notify() -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 10.0.0.1:40417;branch=z9hG4bKfirst;rport")
    h.add("From", "<sip:10.0.0.1:40417>;tag=abc")
    h.add("To", "<sip:10.0.0.7:5060>")
    h.add("Call-ID", "cs-1@10.0.0.1")
    h.add("CSeq", "1 NOTIFY")
    h.add("Event", "check-sync;reboot=false")
    return Request("NOTIFY", "sip:10.0.0.7:5060", h, b"")


def test_sip_notify_answer_matches_the_rfc_formula():
    response = parse(CHALLENGE_401)
    assert isinstance(response, Response)
    again = digest.retry_request(notify(), response, "1001", "s3cret", cseq=2,
                                 branch="z9hG4bKsecond", cnonce="c0ffee")
    wire = parse(again.to_bytes())
    f = fields(wire.headers.get("Authorization"))
    # RFC 2617 §3.2.2 with qop=auth: KD(H(A1), nonce:nc:cnonce:qop:H(A2))
    ha1 = md5("1001:Grandstream:s3cret")
    ha2 = md5("NOTIFY:sip:10.0.0.7:5060")
    assert f["response"] == md5(f"{ha1}:4e2fa1b3:00000001:c0ffee:auth:{ha2}")
    assert (f["username"], f["realm"], f["uri"], f["algorithm"]) == ("1001", "Grandstream", "sip:10.0.0.7:5060", "MD5")
    # RFC 3261 §22.2: same Call-ID and tags, CSeq up by one, a new transaction
    assert wire.call_id == "cs-1@10.0.0.1"
    assert wire.headers.get("From") == "<sip:10.0.0.1:40417>;tag=abc"
    assert wire.headers.get("To") == "<sip:10.0.0.7:5060>"
    assert wire.cseq == (2, "NOTIFY")
    assert "branch=z9hG4bKsecond" in wire.headers.get("Via") and "rport" in wire.headers.get("Via")
    assert wire.headers.get("Event") == "check-sync;reboot=false"


def test_no_qop_is_rfc2069_and_407_answers_in_proxy_authorization():
    raw = CHALLENGE_401.replace(b"401 Unauthorized", b"407 Proxy Authentication Required").replace(
        b'WWW-Authenticate: Digest realm="Grandstream", nonce="4e2fa1b3", qop="auth", algorithm=MD5',
        b'Proxy-Authenticate: Digest realm="pbx", nonce="n1", opaque="o\\"1"')
    again = digest.retry_request(notify(), parse(raw), "1001", "pw", 2, "z9hG4bKx", "cn")
    assert again.headers.get("Authorization") is None
    f = fields(again.headers.get("Proxy-Authorization"))
    assert f["response"] == md5(f"{md5('1001:pbx:pw')}:n1:{md5('NOTIFY:sip:10.0.0.7:5060')}")
    assert "qop" not in f and "nc" not in f and f["opaque"] == 'o\\"1'


def test_sess_algorithm_and_auth_int():
    c = Challenge(realm="r", nonce="n", algorithm="MD5-sess", qop=("auth-int",))
    body = b"http://x/"
    ha1 = md5(f"{md5('u:r:p')}:n:cn")
    ha2 = md5(f"NOTIFY:sip:a:{hashlib.md5(body).hexdigest()}")
    assert digest.digest_response(c, "u", "p", "NOTIFY", "sip:a", "cn", body=body) == \
        md5(f"{ha1}:n:00000001:cn:auth-int:{ha2}")


def test_strongest_of_several_challenges_is_answered():
    raw = CHALLENGE_401.replace(
        b'WWW-Authenticate: Digest realm="Grandstream", nonce="4e2fa1b3", qop="auth", algorithm=MD5\r\n',
        b'WWW-Authenticate: Digest realm="r", nonce="a", qop="auth", algorithm=MD5\r\n'
        b'WWW-Authenticate: Digest realm="r", nonce="b", qop="auth", algorithm=SHA-256\r\n'
        b'WWW-Authenticate: Digest realm="r", nonce="c", algorithm=SHA-512-256\r\n')
    found = digest.challenges(parse(raw))
    assert [c.algorithm for c in found] == ["MD5", "SHA-256"]  # the unknown one is skipped
    assert digest.choose(found).nonce == "b"


def test_stale_and_userhash():
    c = parse_challenge('Digest realm="r", nonce="n", stale=TRUE, userhash=true, algorithm=sha-256')
    assert c.stale and c.userhash and c.algorithm == "SHA-256"
    f = fields(digest.authorization(c, "bob", "pw", "NOTIFY", "sip:a", "cn"))
    assert f["username"] == hashlib.sha256(b"bob:r").hexdigest() and f["userhash"] == "true"


@pytest.mark.parametrize("value, problem", [
    ('Basic realm="x"', "not a Digest"),
    ('Digest realm="x"', "no nonce"),
    ('Digest nonce="x"', "no realm"),
    ('Digest realm="x", nonce="y", algorithm=SHA-1', "unsupported algorithm"),
    ('Digest realm="x", nonce="y", qop="auth-conf"', "no qop"),
    ('Digest realm="x", nonce="y", algorithm=MD5-sess', "without qop"),
    ('Digest realm="x", realm="y", nonce="z"', "twice"),
    ('Digest realm="x, nonce="y"', "bad parameter"),
    ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "not a Digest"),
    ('Digest realm="x", nonce="y"' + ", a=b" * 1000, "too long"),
])
def test_unusable_challenges_are_clear_errors(value, problem):
    with pytest.raises(DigestError, match=problem):
        parse_challenge(value)


def test_a_401_without_a_usable_challenge_names_why():
    raw = CHALLENGE_401.replace(b'Digest realm="Grandstream", nonce="4e2fa1b3", qop="auth", algorithm=MD5',
                                b'Basic realm="x"')
    with pytest.raises(DigestError, match="not a Digest"):
        digest.retry_request(notify(), parse(raw), "u", "p", 2, "z9hG4bKb", "c")
    no_header = CHALLENGE_401.replace(b'WWW-Authenticate: Digest realm="Grandstream", nonce="4e2fa1b3", '
                                      b'qop="auth", algorithm=MD5\r\n', b"")
    with pytest.raises(DigestError, match="without WWW-Authenticate"):
        digest.challenges(parse(no_header))


def test_credentials_that_would_break_the_header_are_refused():
    c = Challenge(realm="r", nonce="n")
    with pytest.raises(DigestError):
        digest.authorization(c, "u\r\nX-Evil: 1", "p", "NOTIFY", "sip:a", "cn")
    # quotes and backslashes are escaped, not refused
    f = fields(digest.authorization(c, 'a"b\\c', "p", "NOTIFY", "sip:a", "cn"))
    assert f["username"] == 'a\\"b\\\\c'


def test_a_standard_server_accepts_our_answer_and_refuses_a_wrong_password():
    # twisted.cred's server side, written independently of ours (the fileserver uses it too).
    from twisted.cred.credentials import DigestCredentialFactory

    factory = DigestCredentialFactory(b"md5", b"pnp")
    offered = factory.getChallenge(b"127.0.0.1")
    value = "Digest " + ", ".join(f'{k}="{v.decode()}"' for k, v in offered.items())
    c = parse_challenge(value)
    for password, accepted in (("s3cret", True), ("wrong", False)):
        answer = digest.authorization(c, "phone", password, "NOTIFY", "sip:127.0.0.7:5060", cnonce="ab12")
        creds = factory.decode(answer[len("Digest "):].encode(), b"NOTIFY", b"127.0.0.1")
        assert creds.checkPassword(b"s3cret") is accepted
