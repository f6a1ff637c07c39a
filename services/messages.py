"""Typed payloads of the contract's topics.

Each payload is a dataclass with ``to_json``/``from_json``. Every payload carries ``v``, the
schema version; a reader accepts unknown fields (so newer publishers do not break older readers)
and rejects missing or mistyped ones with :class:`PayloadError`, whose message names the field.
"""

from __future__ import annotations

import functools
import json
import re
import time
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

SCHEMA_VERSION = 1

T = TypeVar("T", bound="Payload")


class PayloadError(ValueError):
    """A payload that cannot be used; the message says what is wrong with it."""


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current time in the contract's form: ISO 8601, UTC, milliseconds."""
    # A message per download or discovery asks for it: the date and time of day are formatted
    # once a second, only the milliseconds each time (the same text datetime.isoformat gives).
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


def decode_json(raw: bytes | str) -> Any:
    """Parse UTF-8 JSON, raising PayloadError with the reason."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("payload is not JSON: nested too deeply") from None


# json.dumps with options builds an encoder per call; this one is built once (it keeps no state)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_json(data: Any) -> bytes:
    """Compact JSON with sorted keys: the same data always gives the same bytes."""
    return _ENCODER.encode(data).encode("utf-8")


def encode_flat(payload: "Payload") -> bytes:
    """``payload.to_json()`` for a payload whose fields are plain values (no nested dataclass,
    list or dict): the same bytes without dataclasses.asdict's deep copy, in a third of the time,
    which the messages of a boot storm (discoveries, downloads, NOTIFY outcomes) notice."""
    return encode_json({**vars(payload), "v": payload.v})


@dataclass
class Payload:
    v: ClassVar[int] = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["v"] = self.v
        return data

    def to_json(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def from_json(cls: type[T], raw: bytes | str | dict[str, Any]) -> T:
        data = raw if isinstance(raw, dict) else decode_json(raw)
        built: T = _build(cls, data, "")
        return built


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    # Evaluating the string annotations costs ~0.5 ms a payload: do it once per class.
    return typing.get_type_hints(cls)


# Hints whose values JSON gives as exactly that type: such a value needs no further check.
_PLAIN = (str, int, bool, float)


@functools.lru_cache(maxsize=None)
def _plan(cls: type) -> tuple[tuple[str, Any, type | None, bool], ...]:
    """Per field of ``cls``: name, type hint, the plain type a value may simply be (or None), and
    whether it is required. Made once per class: reading ``fields()`` and checking every value
    through :func:`_check` was a quarter of the notifier's work per discovery."""
    hints = _type_hints(cls)
    return tuple((f.name, hints[f.name], hints[f.name] if hints[f.name] in _PLAIN else None,
                  f.default is MISSING and f.default_factory is MISSING) for f in fields(cls))


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise PayloadError(f"{where or 'payload'} must be a JSON object")
    kwargs = {}
    for name, hint, plain, required in _plan(cls):
        if name not in data:
            if required:
                raise PayloadError(f"{where}.{name} is missing" if where else f"{name} is missing")
            continue
        value = data[name]
        # exactly the plain type (a bool is not an int here: type(), not isinstance): as _check
        if plain is not None and type(value) is plain:
            kwargs[name] = value
        else:
            kwargs[name] = _check(hint, value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _check(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, name)
            except PayloadError as exc:
                errors.append(str(exc))
        raise PayloadError(errors[0] if errors else f"{name} has the wrong type")
    if hint is Any:
        return value
    if isinstance(hint, type) and is_dataclass(hint):
        return _build(hint, value, name)
    if origin is list:
        if not isinstance(value, list):
            raise PayloadError(f"{name} must be a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise PayloadError(f"{name} must be an object")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise PayloadError(f"{name} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PayloadError(f"{name} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(f"{name} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PayloadError(f"{name} must be a string")
        return value
    return value


# --- the payloads ----------------------------------------------------------------------------


@dataclass
class Discovered(Payload):
    """``devices/{mac}/discovered``: a phone that SUBSCRIBEd, and its dialog for the NOTIFY."""

    mac: str
    vendor: str
    model: str
    firmware: str
    ip: str
    port: int
    contact: str
    user_agent: str
    call_id: str
    from_tag: str
    to_tag: str
    seen_at: str
    # what an in-dialog NOTIFY needs beyond the contract's minimum
    cseq: int = 0
    request_uri: str = ""
    from_uri: str = ""
    to_uri: str = ""
    event: dict[str, str] = field(default_factory=dict)
    interface: str = ""  # local address the SUBSCRIBE arrived on
    boot: int = 1  # how many boots (new Call-IDs) the listener has seen of this MAC


@dataclass
class ConfigFile(Payload):
    name: str
    content_type: str
    content: str
    encoding: str  # "utf-8" or "base64"
    sha256: str
    size: int


@dataclass
class HttpAuth(Payload):
    """A device's own HTTP credentials, written into its files (the vendor's config-server user
    and password): the fileserver serves the credentialed route ``c/{name}`` to them (Digest).
    ``previous`` is the password before a routine rotation, accepted until the phone has fetched
    the file that carries the new one; None after a re-arm (the old one must die at once)."""

    # the fields a display masks (pnp monitor, the console)
    SECRETS: ClassVar[frozenset[str]] = frozenset({"password", "previous"})

    user: str  # the MAC
    password: str
    previous: str | None = None
    rotate: str = ""  # id of the last rotate command acted on (so a rebuilt store acts on none twice)


@dataclass
class Enrol(Payload):
    """What a device's enrolment epoch was opened for: the fileserver opens a new epoch when this
    differs from the one its current epoch was opened for."""

    assignment: str  # 16 hex digits of the sha256 of the assignment as published (canonical JSON)
    rearm: str = ""  # id of the last rearm command ("" = never re-armed)


@dataclass
class Config(Payload):
    """``devices/{mac}/config``: the rendered files of one device."""

    files: list[ConfigFile]
    revision: int
    template: str
    mac: str = ""
    vendor: str = ""
    model: str = ""
    # path, relative to the device's base URL, that the NOTIFY carries ("" = the directory)
    notify_path: str = ""
    auth: HttpAuth | None = None  # None from an older generator
    enrol: Enrol | None = None  # None from an older generator


@dataclass
class PublishedFile(Payload):
    name: str
    url: str
    sha256: str


@dataclass
class Published(Payload):
    """``devices/{mac}/published`` (the contract): the device's files are being served, at these
    URLs; ``url`` is the one the NOTIFY carries. The URLs are bearer secrets (the URL alone
    downloads the SIP password): under the deployment ACL only the notifier reads this topic,
    the PBX and the operators read :class:`FileList` instead (docs/MQTT.md)."""

    url: str
    files: list[PublishedFile]
    revision: int
    mac: str = ""
    vendor: str = ""
    # the URLs work only while the device is enrolling, and only in this enrolment epoch (a
    # reader treats a missing enrolling, from an older fileserver, as true)
    enrolling: bool = True
    epoch: int = 0


@dataclass
class ListedFile(Payload):
    name: str
    sha256: str
    size: int


@dataclass
class FileList(Payload):
    """``devices/{mac}/files``: the same files as ``published`` without any URL or token, for
    readers that need the state, not the download (pbx, operator)."""

    files: list[ListedFile]
    revision: int
    mac: str = ""
    vendor: str = ""


# A URL as the fileserver makes them: a scheme, an ASCII host (no IPv6 brackets) and nothing
# urlsplit would clean or refuse (no blank, control or non-ASCII character in the host). Read
# with one match, urlsplit's reading of it, at a fraction of its cost (the notifier asks once
# per NOTIFY); any other URL goes to urlsplit itself.
_PLAIN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([A-Za-z0-9.\-_~%!$&'()*+,;=:@]*)"
                        r"((?:[/?#][^\x00-\x20\x7f]*)?)\Z")


def url_without_secret(url: str) -> str:
    """Where a working URL points, without what makes it work (its path and any credentials):
    what a status readable by the PBX and the operators may say of it."""
    plain = _PLAIN_URL.match(url)
    if plain is not None:
        scheme, netloc, rest = plain.groups()
        path, _, query = rest.partition("#")[0].partition("?")  # urlsplit's order
        scheme = scheme.lower()
    else:
        parts = urlsplit(url)
        scheme, netloc, path, query = parts.scheme, parts.netloc, parts.path, parts.query
    host = netloc.rpartition("@")[2]
    return f"{scheme}://{host}" + ("/…" if path.strip("/") or query else "/")


@dataclass
class NotifyStatus(Payload):
    """``devices/{mac}/notify``: how the NOTIFY to the phone went."""

    status: str  # sent, accepted, rejected, timeout
    code: int | None
    attempts: int
    url: str  # url_without_secret of the URL sent: pbx and operator read this topic
    revision: int
    call_id: str
    at: str
    reason: str = ""
    rtt_ms: float | None = None
    kind: str = "ua-profile"  # or "check-sync" for a resync
    challenged: bool = False  # the phone asked for credentials (401/407) and got them


@dataclass
class ResyncCredentials(Payload):
    """``devices/{mac}/resync`` (generator to notifier only): what a phone that challenges our
    NOTIFY (RFC 3261 §22) checks the answer against, for the config of ``revision``: account 1's
    authentication name (``auth_id``, else ``user_id``) and password."""

    revision: int
    username: str
    password: str
    mac: str = ""


@dataclass
class Fetched(Payload):
    """``devices/{mac}/fetched``: a download of a device's file."""

    file: str
    sha256: str
    status: int
    client: str
    user_agent: str
    provisioned: bool
    at: str
    revision: int | None = None
    server: str = ""  # the fileserver instance that served it (several may serve one site)
    # "bootstrap" (the URL the NOTIFY carried) or "device" (the device's own HTTP credentials)
    auth: str = ""
    epoch: int | None = None  # the enrolment epoch it was served in


@dataclass
class Enrolment(Payload):
    """``devices/{mac}/enrolment`` (fileserver): whether the device may be provisioned through
    Plug and Play now. ``state``: enrolling, provisioned, expired or conflict; ``epoch`` rises
    with each new or changed assignment and each re-arm; ``candidate`` the address that
    discovered it first in this epoch, ``bound`` the one that completed its first download;
    ``addresses`` the two that claimed it (conflict only, else empty)."""

    state: str
    epoch: int
    since: str
    until: str
    bound: str | None = None
    candidate: str | None = None
    addresses: list[str] = field(default_factory=list)
    reason: str = ""
    mac: str = ""
    at: str = ""


@dataclass
class ErrorReport(Payload):
    """``devices/{mac}/error``: what went wrong with a device, in an operator's words."""

    service: str
    code: str
    message: str
    at: str
    field: str | None = None


@dataclass
class Command(Payload):
    """``devices/{mac}/rearm`` and ``devices/{mac}/rotate``: an operator's command to the
    generator, retained, acted on once per ``id`` (a replay of the same id does nothing)."""

    id: str
    at: str


@dataclass
class ServiceStatus(Payload):
    """``services/{service}/{instance}``: online (healthy or degraded), or offline by last will."""

    state: str
    version: str
    started_at: str
    service: str = ""
    instance: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    at: str = ""
    # ``ok``, or ``degraded`` with ``reasons`` (what is wrong now, by key); ``notices`` are
    # faults that healed by themselves (a store rebuilt), kept so an operator can see them
    health: str = "ok"
    reasons: dict[str, str] = field(default_factory=dict)
    notices: dict[str, str] = field(default_factory=dict)
