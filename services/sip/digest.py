"""HTTP Digest authentication as SIP uses it, client side (RFC 3261 §22, RFC 7616, RFC 2617).

Sans-I/O: parse the ``WWW-Authenticate`` or ``Proxy-Authenticate`` challenge of a 401/407, compute
the answer, and build the request to send again (§22.2: same Call-ID and tags, a new CSeq, a new
transaction). Nothing here keeps state between challenges: a caller that retries more than once
loops by its own choice.

Algorithms: MD5, MD5-sess, SHA-256, SHA-256-sess (RFC 7616 §3.4.2); qop ``auth`` (preferred) or
``auth-int``, or none (RFC 2069 compatibility, what many SIP stacks still send); ``userhash``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

from services.sip.message import Headers, Request, Response, SipParseError, Via, parse_via

__all__ = [
    "DigestError", "Challenge", "parse_fields", "parse_challenge", "challenges", "choose", "digest_response",
    "authorization", "retry_request", "ALGORITHMS",
]


class DigestError(ValueError):
    """A challenge we cannot answer; the message says why."""


_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
# Preference when a response offers several challenges (RFC 7616 §3.7 leaves it to the client;
# RFC 8760 asks SIP clients to prefer the strongest they support).
ALGORITHMS = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

# Far more than any real challenge; a hostile 401 is refused before any regex work.
MAX_CHALLENGE = 4096


@dataclass(frozen=True)
class Challenge:
    """One Digest challenge. ``algorithm`` is in canonical spelling (``MD5``, ``SHA-256-sess``);
    ``qop`` is empty when the challenge offered none."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False
    proxy: bool = False  # from Proxy-Authenticate (a 407): answer in Proxy-Authorization

    @property
    def header(self) -> str:
        """The header that carries the answer."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


# auth-param = token BWS "=" BWS ( token / quoted-string ), comma-separated (RFC 7235 §2.1)
_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(,|\Z)', re.S)


def parse_fields(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` -> ("Digest", {"a": "b", "c": "d"}): a challenge's or an answer's
    scheme and parameters (names lower-cased, quoted strings unquoted); DigestError on bad syntax."""
    if len(value) > MAX_CHALLENGE:
        raise DigestError(f"header value of {len(value)} characters is too long")
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            raise DigestError(f"bad parameter at {rest[pos:pos + 30]!r}")
        name = m.group(1).lower()
        if name in params:
            raise DigestError(f"parameter {name} given twice")
        quoted = m.group(2)
        params[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else m.group(3)
        pos = m.end()
    return scheme, params


def parse_challenge(value: str, proxy: bool = False) -> Challenge:
    """A ``Digest realm=..., nonce=...`` header value; DigestError when it is not a Digest
    challenge we can answer (another scheme, no nonce, an unknown algorithm, bad syntax)."""
    scheme = value.strip().partition(" ")[0]
    if scheme.lower() != "digest":  # before the syntax: Basic's token68 is no auth-param list
        raise DigestError(f"not a Digest challenge: scheme {scheme[:20]!r}")
    _, params = parse_fields(value)
    if "nonce" not in params:
        raise DigestError("challenge has no nonce")
    if "realm" not in params:
        raise DigestError("challenge has no realm")
    algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    if qop and not {"auth", "auth-int"} & set(qop):
        raise DigestError(f"no qop we support in {params['qop']!r} (auth, auth-int)")
    if algorithm.endswith("-sess") and not qop:
        # H(A1) then covers a cnonce, which only a qop answer carries (RFC 2617 §3.2.2).
        raise DigestError(f"{algorithm} without qop cannot be answered")
    return Challenge(
        realm=params["realm"], nonce=params["nonce"], algorithm=algorithm, qop=qop,
        opaque=params.get("opaque"), stale=params.get("stale", "").lower() == "true",
        userhash=params.get("userhash", "").lower() == "true", proxy=proxy)


def _canonical_algorithm(text: str) -> str:
    for known in ALGORITHMS:
        if text.strip().upper() == known.upper():
            return known
    raise DigestError(f"unsupported algorithm {text[:30]!r} (supported: {', '.join(ALGORITHMS)})")


def challenges(response: Response) -> list[Challenge]:
    """Every Digest challenge of a 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``)
    that we can answer, in the order given; DigestError naming the problems when there is none."""
    if response.status not in (401, 407):
        raise DigestError(f"a {response.status} is not a challenge")
    proxy = response.status == 407
    name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    values = response.headers.get_all(name)
    if not values:
        raise DigestError(f"{response.status} without {name}")
    found: list[Challenge] = []
    problems: list[str] = []
    for value in values:
        try:
            found.append(parse_challenge(value, proxy))
        except DigestError as exc:
            problems.append(str(exc))
    if not found:
        raise DigestError("; ".join(problems))
    return found


def choose(offered: list[Challenge]) -> Challenge:
    """The challenge to answer among several (one realm, several algorithms): the strongest."""
    if not offered:
        raise DigestError("no challenge to answer")
    return min(offered, key=lambda c: ALGORITHMS.index(c.algorithm))


def _hash(algorithm: str) -> Callable[[str | bytes], str]:
    fn = _HASHES[algorithm.removesuffix("-sess")]

    def h(data: str | bytes) -> str:
        return fn(data.encode("utf-8") if isinstance(data, str) else data)

    return h


def _qop(challenge: Challenge) -> str | None:
    if not challenge.qop:
        return None
    return "auth" if "auth" in challenge.qop else "auth-int"


def digest_response(challenge: Challenge, username: str, password: str, method: str, uri: str,
                    cnonce: str, nc: int = 1, body: bytes = b"") -> str:
    """The ``response`` value (RFC 7616 §3.4.1): KD(H(A1), nonce:nc:cnonce:qop:H(A2)), or
    KD(H(A1), nonce:H(A2)) when the challenge offered no qop (RFC 2069)."""
    h = _hash(challenge.algorithm)
    ha1 = h(f"{username}:{challenge.realm}:{password}")
    if challenge.algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    qop = _qop(challenge)
    a2 = f"{method}:{uri}" if qop != "auth-int" else f"{method}:{uri}:{h(body)}"
    ha2 = h(a2)
    if qop is None:
        return h(f"{ha1}:{challenge.nonce}:{ha2}")
    return h(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(challenge: Challenge, username: str, password: str, method: str, uri: str,
                  cnonce: str, nc: int = 1, body: bytes = b"") -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge`` for a request
    ``method`` to ``uri`` (its Request-URI, as written on the start line)."""
    if any(c in username + password for c in "\r\n\0"):
        raise DigestError("user name or password contains a line break or NUL")
    response = digest_response(challenge, username, password, method, uri, cnonce, nc, body)
    shown = _hash(challenge.algorithm)(f"{username}:{challenge.realm}") if challenge.userhash else username
    fields = [f"username={_quote(shown)}", f"realm={_quote(challenge.realm)}",
              f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}",
              f"response={_quote(response)}", f"algorithm={challenge.algorithm}"]
    qop = _qop(challenge)
    if qop is not None:
        fields += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc:08x}"]
    if challenge.opaque is not None:
        fields.append(f"opaque={_quote(challenge.opaque)}")
    if challenge.userhash:
        fields.append("userhash=true")
    return "Digest " + ", ".join(fields)


def retry_request(request: Request, response: Response, username: str, password: str, cseq: int,
                  branch: str, cnonce: str) -> Request:
    """``request`` again with credentials for the challenge in ``response`` (RFC 3261 §22.2):
    same Call-ID, From and To (tags included), CSeq ``cseq`` (the caller's next number in that
    Call-ID), top Via with the new ``branch`` (a new transaction), and one Authorization or
    Proxy-Authorization answering the strongest challenge. Credentials the request already
    carried for that header are replaced. DigestError when the response holds nothing usable."""
    challenge = choose(challenges(response))
    _, method = request.cseq
    value = authorization(challenge, username, password, request.method, request.uri, cnonce,
                          body=request.body)
    headers = request.headers.copy()
    vias = headers.get_all("Via")
    if not vias:
        raise DigestError("the request has no Via")
    try:
        top = parse_via(vias[0])
    except SipParseError as exc:
        raise DigestError(f"the request's Via: {exc}") from None
    headers.set("Via", str(Via(top.transport, top.host, top.port, {**top.params, "branch": branch})))
    for via in vias[1:]:
        headers.add("Via", via)
    headers.set("CSeq", f"{cseq} {method}")
    headers.set(challenge.header, value)
    return Request(request.method, request.uri, headers, request.body)
