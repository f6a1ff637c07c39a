"""SIP messages (RFC 3261 §7, §20, §25): parse bytes into requests and responses, build them back.

Sans-I/O: no sockets, no reactor, no clock. Parsing any input either returns a message or raises
:class:`SipParseError`; no other exception escapes :func:`parse`, whatever the bytes.

The parser is deliberately strict about framing (start line, header syntax, Content-Length)
and lenient about content (unknown headers, bare LF line ends, header folding), which is what
keeps a listener answering the phones in the field while dropping everything else.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

__all__ = [
    "SipParseError", "SipTooLarge", "Headers", "Request", "Response", "NameAddr", "Via", "SipUri",
    "MAX_VIAS", "too_many_vias", "amplifies",
    "parse", "parse_name_addr", "parse_via", "parse_params", "parse_uri", "parse_value",
    "build_response", "response_bytes", "header_lines", "new_branch", "new_tag", "new_call_id", "MAGIC_COOKIE", "unsafe_header",
]

MAGIC_COOKIE = "z9hG4bK"

# More than any real message carries; the cap keeps hostile datagrams cheap to refuse.
MAX_HEADERS = 256
MAX_MESSAGE = 256 * 1024
# UDP's own limit: a socket reads each datagram whole, and MAX_MESSAGE decides what is too large.
# (Twisted's default of 8,192 cut longer ones short, which then read as malformed.)
MAX_DATAGRAM = 65535


class SipParseError(ValueError):
    """Bytes that are not a SIP message we can use; the message says why."""


class SipTooLarge(SipParseError):
    """A message over MAX_MESSAGE bytes: refused before anything of it is parsed."""


# --- header names ----------------------------------------------------------------------------

# RFC 3261 §7.3.3 plus the later RFCs' compact forms (u: 6665, r/b: 3515/3892, x: 4028 ...).
_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "e": "content-encoding", "k": "supported", "o": "event", "s": "subject",
    "u": "allow-events", "r": "refer-to", "b": "referred-by", "x": "session-expires",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition", "y": "identity",
    "n": "identity-info",
}

_CANONICAL = {name.lower(): name for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type",
    "Content-Encoding", "Supported", "Event", "Subject", "Allow-Events", "Refer-To", "Referred-By",
    "Session-Expires", "Accept-Contact", "Reject-Contact", "Request-Disposition", "Identity",
    "Identity-Info", "Max-Forwards", "User-Agent", "Server", "Expires", "Allow", "Accept",
    "Accept-Encoding", "Accept-Language", "Require", "Proxy-Require", "Unsupported", "Route",
    "Record-Route", "Path", "Subscription-State", "WWW-Authenticate", "Authorization",
    "Proxy-Authenticate", "Proxy-Authorization", "Warning", "Date", "Timestamp",
    "Min-Expires", "Retry-After", "Organization", "Priority", "Reply-To", "In-Reply-To",
    "Alert-Info", "Call-Info", "Error-Info", "Content-Disposition", "Content-Language",
    "MIME-Version",
)}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1): get_all() splits them.
_LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "path", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "content-language", "in-reply-to", "warning",
    "alert-info", "call-info", "error-info",
})

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_METHOD_RE = _TOKEN_RE
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)\Z")

# raw header name -> (key, display name); bounded so that random names cannot grow it.
_NAME_CACHE: dict[str, tuple[str, str]] = {}
_NAME_CACHE_MAX = 512


def _name_key(name: str) -> tuple[str, str]:
    """(lookup key, display name) of a header name; compact forms become full names."""
    found = _NAME_CACHE.get(name)
    if found is not None:
        return found
    lower = name.lower()
    key = _COMPACT.get(lower, lower) if len(lower) == 1 else lower
    result = (key, _CANONICAL.get(key, name))
    # only valid names go in: the parser skips its syntax check for names found here
    if len(_NAME_CACHE) < _NAME_CACHE_MAX and _TOKEN_RE.match(name):
        _NAME_CACHE[name] = result
    return result


def _split_outside_quotes(text: str, sep: str, angles: bool) -> tuple[list[str], bool]:
    """Split at ``sep`` outside quoted strings (and outside <...> when ``angles``).
    Returns the pieces and whether a quoted string was left open."""
    parts: list[str] = []
    start = 0
    quoted = angle = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angles and ch == "<":
            angle = True
        elif angles and ch == ">":
            angle = False
        elif ch == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts, quoted


def _split_list(value: str) -> list[str]:
    """Split at commas outside quoted strings and <...>."""
    if "," not in value:
        return [value.strip()]
    items, _ = _split_outside_quotes(value, ",", angles=True)
    return [item.strip() for item in items if item.strip()]


class Headers:
    """Ordered, multi-valued, case-insensitive SIP headers.

    Compact names are stored under their full names. ``get_all`` splits the comma-joined values
    of list headers (Via, Contact, Route, Allow, ...), so ``Via: a, b`` and two Via lines read
    the same.
    """

    __slots__ = ("_items", "_first")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] | None = None) -> None:
        # [key, display name, value]
        self._items: list[tuple[str, str, str]] = []
        # key -> first value, built on the first get(): a message is read far more than written
        self._first: dict[str, str] | None = None
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for name, value in pairs:
                self.add(name, value)

    def add(self, name: str, value: str) -> None:
        key, display = _name_key(name)
        self._items.append((key, display, str(value)))
        self._first = None

    def get(self, name: str) -> str | None:
        known = _NAME_CACHE.get(name)  # _name_key's own first step, without the call
        key = known[0] if known is not None else _name_key(name)[0]
        first = self._first
        if first is None:
            first = {}
            for k, _, v in self._items:
                if k not in first:
                    first[k] = v
            self._first = first
        value = first.get(key)
        if value is not None and key in _LIST_HEADERS and "," in value:
            parts = _split_list(value)
            return parts[0] if parts else value
        return value

    def get_all(self, name: str) -> list[str]:
        key = _name_key(name)[0]
        values = [value for k, _, value in self._items if k == key]
        if key not in _LIST_HEADERS:
            return values
        out: list[str] = []
        for value in values:
            out.extend(_split_list(value))
        return out

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value``, where the first one was."""
        key, display = _name_key(name)
        items = []
        placed = False
        for item in self._items:
            if item[0] == key:
                if not placed:
                    items.append((key, display, str(value)))
                    placed = True
            else:
                items.append(item)
        if not placed:
            items.append((key, display, str(value)))
        self._items = items
        self._first = None

    def remove(self, name: str) -> None:
        key = _name_key(name)[0]
        self._items = [item for item in self._items if item[0] != key]
        self._first = None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _name_key(name)[0]
        return any(k == key for k, _, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def copy(self) -> "Headers":
        h = Headers()
        h._items = list(self._items)
        h._first = None
        return h

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def _encode(self, body_length: int) -> list[str]:
        lines = []
        length_done = False
        for key, name, value in self._items:
            if key == "content-length":
                if length_done:
                    continue
                value = str(body_length)
                length_done = True
            lines.append(f"{name}: {value}\r\n")
        if not length_done:
            lines.append(f"Content-Length: {body_length}\r\n")
        return lines


# --- messages --------------------------------------------------------------------------------


class _Message:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str | None:
        return self.headers.get("call-id")

    # (the CSeq value read last, what it gave): parse validates it and a server's transaction
    # key reads it again, for every request
    _cseq_read: tuple[str | None, tuple[int, str]] | None = None

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method) of the CSeq header; SipParseError when missing or malformed."""
        value = self.headers.get("cseq")
        read = self._cseq_read
        if read is not None and read[0] is value:
            return read[1]
        m = _CSEQ_RE.match(value.strip()) if value else None
        if not m:
            raise SipParseError(f"bad CSeq {value!r}")
        result = int(m.group(1)), m.group(2).upper()
        self._cseq_read = (value, result)
        return result

    def _encode(self, start: str) -> bytes:
        body = self.body or b""
        return "".join([start, *self.headers._encode(len(body)), "\r\n"]).encode("utf-8") + body


@dataclass(eq=True)
class Request(_Message):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The message on the wire; Content-Length always matches the body."""
        return self._encode(f"{self.method} {self.uri} SIP/2.0\r\n")


@dataclass(eq=True)
class Response(_Message):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return self._encode(f"SIP/2.0 {self.status} {self.reason}\r\n")


_REQUIRED = ("via", "from", "to", "call-id", "cseq")


def parse(data: bytes) -> Request | Response:
    """One SIP message from one datagram (RFC 3261 §7, §18.3). Raises only SipParseError."""
    try:
        return _parse(data)
    except SipParseError:
        raise
    except Exception as exc:  # whatever slipped past the checks: still just "not SIP"
        raise SipParseError(f"unparseable message ({type(exc).__name__})") from None


def _parse(data: bytes) -> Request | Response:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SipParseError("not bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE:
        raise SipTooLarge(f"message of {len(data)} bytes is too large (at most {MAX_MESSAGE})")
    # RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, rest = data[:end], data[end + 4:]
    else:
        end = data.find(b"\n\n")
        if end < 0:
            raise SipParseError("no end of headers (truncated?)")
        head, rest = data[:end], data[end + 2:]
    if not head:
        raise SipParseError("empty message")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    if "\0" in text:
        raise SipParseError("NUL in headers")

    lines = text.split("\n")
    if len(lines) > MAX_HEADERS + 1:
        raise SipParseError(f"more than {MAX_HEADERS} header lines")
    start = lines[0].rstrip("\r")
    message = _start_line(start)

    headers = message.headers
    items = headers._items
    cache = _NAME_CACHE
    for raw in lines[1:]:
        # The usual line first: a known name (the cache holds checked tokens only, never one
        # with a blank, so not a folded line), a colon, a value. Each check skipped here was a
        # measurable share of the listener's CPU per SUBSCRIBE.
        name, colon, value = raw.partition(":")
        known = cache.get(name)
        if known is not None and colon:
            if value[-1:] == "\r":
                value = value[:-1]
            items.append((known[0], known[1], value.strip(" \t")))
            continue
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            raise SipParseError("empty line inside the headers")
        if line[0] in " \t":
            # RFC 3261 §7.3.1 folding: the line continues the previous header's value.
            if not items:
                raise SipParseError("continuation line before any header")
            key, name, value = items[-1]
            items[-1] = (key, name, f"{value} {line.strip()}".strip())
            headers._first = None
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without ':': {line[:40]!r}")
        name = name.rstrip(" \t")
        known = _NAME_CACHE.get(name)  # names in the cache were checked when they went in
        if known is None:
            if not _TOKEN_RE.match(name):
                raise SipParseError(f"bad header name {name[:40]!r}")
            known = _name_key(name)
        key, display = known
        items.append((key, display, value.strip(" \t")))

    # The first value of each header, as Headers.get reads them (the first one wins): made
    # here once, it also says which headers are present.
    first = {k: v for k, _, v in reversed(items)}
    headers._first = first
    for key in _REQUIRED:
        if key not in first:
            raise SipParseError(f"no {_CANONICAL[key]} header")
    message.cseq  # validates

    length_value = headers.get("content-length")
    if length_value is None:
        body = rest  # allowed over UDP (RFC 3261 §18.3): the datagram ends the body
    else:
        length_value = length_value.strip()
        if not length_value.isdigit() or not length_value.isascii() or len(length_value) > 9:
            raise SipParseError(f"bad Content-Length {length_value[:20]!r}")
        length = int(length_value)
        if length > len(rest):
            raise SipParseError(f"Content-Length {length} but {len(rest)} bytes of body (truncated)")
        body = rest[:length]
    message.body = body
    return message


def _start_line(line: str) -> Request | Response:
    if line.startswith("SIP/2.0 "):
        parts = line.split(" ", 2)
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or not "100" <= code <= "699":
            raise SipParseError(f"bad status code {code[:10]!r}")
        return Response(int(code), parts[2].strip() if len(parts) > 2 else "", Headers())
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"bad start line {line[:60]!r}")
    method, uri, version = parts
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"not SIP/2.0: {version[:20]!r}")
    if not _METHOD_RE.match(method):
        raise SipParseError(f"bad method {method[:20]!r}")
    if ":" not in uri or not uri.isprintable():
        raise SipParseError(f"bad Request-URI {uri[:60]!r}")
    return Request(method.upper(), uri, Headers())


# --- header values ---------------------------------------------------------------------------


def _split_semicolons(text: str) -> list[str]:
    """Split at ';' outside quoted strings; unterminated quotes raise SipParseError."""
    if '"' not in text:
        return text.split(";")
    # Fast path: without backslash escapes, the quoted strings are every second piece between
    # quotes; balanced quotes and none of those pieces holding a ';' mean no ';' sits inside a
    # quoted string (the same test as an even count of quotes in every ';' piece, done in C).
    if "\\" not in text:
        pieces = text.split('"')
        if len(pieces) % 2 and ";" not in "".join(pieces[1::2]):
            return text.split(";")
    parts, quoted = _split_outside_quotes(text, ";", angles=False)
    if quoted:
        raise SipParseError("unterminated quoted string")
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" in inner:
            inner = re.sub(r"\\(.)", r"\1", inner)
        return inner
    if value[:1] == '"':
        raise SipParseError("unterminated quoted string")
    return value


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=b;c;d="x y"`` (leading ';' optional) -> {"a": "b", "c": None, "d": "x y"}.

    Names are lowercased (they are case-insensitive); quoted values are unquoted.
    """
    params: dict[str, str | None] = {}
    for part in _split_semicolons(text):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError(f"parameter without a name: {part[:40]!r}")
        params[name] = _unquote(value.strip()) if eq else None
    return params


def parse_value(value: str) -> tuple[str, dict[str, str | None]]:
    """A header value with parameters (Event, Subscription-State, Content-Type...):
    ``ua-profile;profile-type="device"`` -> ("ua-profile", {"profile-type": "device"})."""
    parts = _split_semicolons(value)
    rest = ";".join(parts[1:])
    return parts[0].strip(), parse_params(rest) if rest else {}


_NEEDS_QUOTES = re.compile(r"[\s\";,<>]")


def _format_params(params: Mapping[str, str | None]) -> str:
    out = []
    for name, value in params.items():
        if value is None:
            out.append(f";{name}")
        elif value == "" or _NEEDS_QUOTES.search(value):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f';{name}="{escaped}"')
        else:
            out.append(f";{name}={value}")
    return "".join(out)


@dataclass
class SipUri:
    """``sip:user@host:port;params`` (user kept as written, percent-escapes included)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{_format_params(self.params)}{headers}"


_BAD_HOST = re.compile(r'[ \t<>"@;,?]')


def _host_port(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"bad IPv6 host {text[:60]!r}")
        host, rest = text[:close + 1], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"bad host {text[:60]!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = None
    if not host or _BAD_HOST.search(host):
        raise SipParseError(f"bad host {text[:60]!r}")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
            raise SipParseError(f"bad port {port_text[:10]!r}")
        port = int(port_text)
        if not 0 < port < 65536:
            raise SipParseError(f"bad port {port}")
    return host, port


def parse_uri(uri: str) -> SipUri:
    """A sip: or sips: URI (RFC 3261 §19.1)."""
    scheme, colon, rest = uri.strip().partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise SipParseError(f"not a sip: URI {uri[:60]!r}")
    rest, _, headers = rest.partition("?")
    at = rest.rfind("@")
    user = None
    if at >= 0:
        user, rest = rest[:at], rest[at + 1:]
    hostport, _, params = rest.partition(";")
    host, port = _host_port(hostport)
    return SipUri(scheme, user, host, port, parse_params(params) if params else {}, headers)


@dataclass
class NameAddr:
    """A From/To/Contact value: display name, URI and header parameters (``tag`` ...)."""

    display: str
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> "NameAddr":
        return NameAddr(self.display, self.uri, {**self.params, "tag": tag})

    def __str__(self) -> str:
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{_format_params(self.params)}"


_BAD_URI = re.compile(r"[ \t<>]")


def parse_name_addr(value: str) -> NameAddr:
    """``"Name" <sip:u@h>;tag=x``, ``Name <sip:u@h>``, or the bare ``sip:u@h;tag=x``, whose
    ';' parameters are header parameters (RFC 3261 §20.10)."""
    text = value.strip()
    display = ""
    if text.startswith('"'):
        i = 1
        escaped = False
        while i < len(text):
            ch = text[i]
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                break
            i += 1
        else:
            raise SipParseError("unterminated display name")
        display = _unquote(text[:i + 1])
        text = text[i + 1:].lstrip()
        if not text.startswith("<"):
            raise SipParseError("display name without <uri>")
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("'<' without '>'")
        if not display:
            display = text[:lt].strip()
        uri = text[lt + 1:gt].strip()
        rest = text[gt + 1:]
    else:
        uri, _, rest = text.partition(";")
        uri = uri.strip()
        rest = ";" + rest if rest else ""
    if not uri or ":" not in uri or _BAD_URI.search(uri):
        raise SipParseError(f"bad URI {uri[:60]!r}")
    rest = rest.strip()
    if rest and not rest.startswith(";"):
        raise SipParseError(f"junk after the address: {rest[:40]!r}")
    return NameAddr(display, uri, parse_params(rest) if rest else {})


@dataclass
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"


_VIA_RE = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(.*)\Z", re.I | re.S)


def parse_via(value: str) -> Via:
    """One Via value (split a header with several first: ``Headers.get_all("Via")``)."""
    m = _VIA_RE.match(value)
    if not m:
        raise SipParseError(f"bad Via {value[:60]!r}")
    sent_by, _, params = m.group(2).partition(";")
    host, port = _host_port(sent_by)
    return Via(m.group(1).upper(), host, port, parse_params(params) if params else {})


# --- values that must not be echoed --------------------------------------------------------


def unsafe_header(message: Request | Response) -> str | None:
    """The name of the first header whose value holds CR, LF or NUL, or None if none does.

    The parser ends lines only at LF (and CRLF), so a bare CR stays inside a value; a value
    copied into an answer (Via, From, To, Call-ID are) would then end a line where the sender
    chose, and a terminal or log showing it would jump back over its line. No valid header
    value holds one (RFC 3261 §25.1: CR and LF only as line folding, which the parser undoes).
    """
    for _, name, value in message.headers._items:  # runs for every SUBSCRIBE: no regex
        if "\r" in value or "\n" in value or "\0" in value:
            return name
    return None


# --- answers that would amplify -------------------------------------------------------------

# A Plug and Play SUBSCRIBE is multicast by a phone on its own LAN: no proxy forwards it, so it
# carries one Via (every capture in tests/golden does). RFC 3261 §8.2.6.2 has a response copy
# every Via, and a copy of thousands of them, sent to a source anyone can spoof, is a reflector:
# so a request with more than MAX_VIAS gets no answer at all (as if the datagram were lost),
# rather than an answer with Vias cut, which no proxy could route anyway.
MAX_VIAS = 8


def too_many_vias(request: Request, vias: list[str] | None = None) -> bool:
    """More Vias than any request a server answering phones on its LAN needs to answer
    (``vias``: ``request.headers.get_all("via")``, when the caller has it already)."""
    return len(request.headers.get_all("via") if vias is None else vias) > MAX_VIAS


def amplifies(request_size: int, answer: bytes) -> bool:
    """An answer larger than the datagram that caused it: never sent, whatever made it so
    (compact header names spelled out, a short Via made long by ``received``/``rport``), so
    that nobody gains bytes by spoofing a source address."""
    return len(answer) > request_size


# --- building --------------------------------------------------------------------------------


def build_response(request: Request, status: int, reason: str, to_tag: str | None = None,
                   received: str | tuple[str, int] | None = None,
                   headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                   ) -> Response:
    """The response a UAS sends to ``request`` (RFC 3261 §8.2.6).

    Every Via is copied in order. ``received`` is where the request came from, ``(host, port)``
    or a host: the top Via gets ``received=`` (always when it asked for ``rport``, RFC 3581 §4;
    otherwise when the host differs from its sent-by, RFC 3261 §18.2.1) and ``rport=<port>``
    when it carried ``rport``. From, Call-ID and CSeq are copied; To is copied and gets
    ``;tag=to_tag`` unless it has a tag. ``headers`` are added after those; Content-Length is 0.
    """
    out = Headers()
    for name, value in _copied(request, to_tag, received, None, None, None):
        out.add(name, value)
    if headers is not None:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            out.add(name, value)
    out.remove("Content-Length")
    out.add("Content-Length", "0")
    return Response(status, reason, out, b"")


def header_lines(headers: Iterable[tuple[str, str]]) -> str:
    """Header fields as they go on the wire (names spelled as :class:`Headers` spells them),
    for :func:`response_bytes`' ``extra``: made once, added to every answer."""
    return "".join(f"{_name_key(name)[1]}: {value}\r\n" for name, value in headers)


def response_bytes(request: Request, status: int, reason: str, to_tag: str | None = None,
                   received: str | tuple[str, int] | None = None, extra: str = "", *,
                   vias: list[str] | None = None, top: Via | None = None,
                   to_tagged: bool | None = None) -> bytes:
    """``build_response(...).to_bytes()`` with ``extra`` (see :func:`header_lines`) as its
    added headers, made straight into bytes: a listener answers every SUBSCRIBE with one, and
    the :class:`Response` and :class:`Headers` in between were a fifth of its CPU per SUBSCRIBE.
    A caller that parsed them already may pass ``vias`` (``headers.get_all("via")``), ``top``
    (the first one parsed) and ``to_tagged`` (whether the To carries a tag): the same answer,
    without parsing them again."""
    lines = [f"SIP/2.0 {status} {reason}\r\n"]
    for name, value in _copied(request, to_tag, received, vias, top, to_tagged):
        lines.append(f"{name}: {value}\r\n")
    lines.append(extra)
    lines.append("Content-Length: 0\r\n\r\n")
    return "".join(lines).encode("utf-8")


def _copied(request: Request, to_tag: str | None, received: str | tuple[str, int] | None,
            vias: list[str] | None, top: Via | None, to_tagged: bool | None,
            ) -> list[tuple[str, str]]:
    """What a response copies from its request, in order (RFC 3261 §8.2.6; the rules are in
    :func:`build_response`'s docstring): the one home of them for both builders."""
    src = request.headers
    out: list[tuple[str, str]] = []
    if vias is None:
        vias = src.get_all("via")
    else:
        vias = list(vias)
    if received is not None and vias:
        host, port = (received, None) if isinstance(received, str) else received
        if top is None:
            top = parse_via(vias[0])
        params = dict(top.params)
        if "rport" in params:
            params["received"] = host
            if port is not None:
                params["rport"] = str(port)
        elif host != top.host:
            params["received"] = host
        vias[0] = str(Via(top.transport, top.host, top.port, params))
    for via in vias:
        out.append(("Via", via))
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = src.get(name)
        if value is None:
            continue
        if name == "To" and to_tag:
            if to_tagged is None:
                to_tagged = parse_name_addr(value).tag is not None
            if not to_tagged:
                value = f"{value};tag={to_tag}"
        out.append((name, value))
    return out


def new_branch() -> str:
    """A branch that marks an RFC 3261 transaction (magic cookie + randomness)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"
