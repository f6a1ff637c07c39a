"""A device's files as the fileserver holds them: checked, decoded, headers computed once.

``decode_config`` turns a ``config`` payload into :class:`DeviceFiles` or refuses it with a
:class:`Rejected` that names the field, so a bad payload never replaces the last good files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.messages import Config, PayloadError, decode_json
from fileserver.enrolment import Key
from fileserver import etag
from fileserver.paths import is_file_name

_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;\s*[A-Za-z0-9_.+-]+=[A-Za-z0-9_.+\"-]+)*")
_NOTIFY_PATH = re.compile(r"[A-Za-z0-9._~{}$%=&?/-]*")
MAX_FILE = 16 * 1024 * 1024
_UNQUOTABLE = re.compile(r'[\x00-\x1f"]')


class Rejected(ValueError):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True)
class ServedFile:
    name: str
    content_type: str
    body: bytes
    sha256: str
    # response headers of a 200, as raw bytes, computed once per file
    headers: tuple[tuple[bytes, bytes], ...] = field(repr=False, default=())
    length: bytes = field(repr=False, default=b"0")
    # the same as header lines, ready to write: a 200's (Content-Length last) and a 304's (no
    # Content-Type, no Repr-Digest: they describe a body a 304 does not have)
    head: bytes = field(repr=False, default=b"")
    head_304: bytes = field(repr=False, default=b"")

    @classmethod
    def make(cls, name: str, content_type: str, body: bytes, sha256: str) -> "ServedFile":
        headers = (
            (b"Content-Type", content_type.encode("ascii")),
            (b"ETag", etag.etag(sha256).encode("ascii")),
            (b"Repr-Digest", etag.repr_digest(sha256).encode("ascii")),
            (b"Cache-Control", b"no-store"),
        )
        length = b"%d" % len(body)
        head = _lines(headers + ((b"Content-Length", length),))
        head_304 = _lines(tuple(h for h in headers[1:] if h[0] != b"Repr-Digest"))
        return cls(name, content_type, body, sha256, headers, length, head, head_304)


def _lines(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


@dataclass(frozen=True)
class DeviceFiles:
    mac: str
    revision: int
    vendor: str
    model: str
    template: str
    notify_path: str
    files: dict[str, ServedFile]
    # the device's own HTTP credentials (user: the MAC) from the config's auth; None: none given
    password: str | None = None
    previous: str | None = None  # the one before a rotation, accepted for a while
    enrol: Key | None = None  # the config's enrol: which epoch it belongs to

    @cached_property
    def main(self) -> ServedFile | None:
        """The file that makes the phone: the one the NOTIFY names, else the one named after the
        MAC (cfg{mac}.xml, {mac}.cfg), else the only one. Found once: a device's files never
        change (a new config is a new DeviceFiles), and every download and config asks."""
        named = self.files.get(self.notify_path.rpartition("/")[2])
        if named is not None:
            return named
        for name in sorted(self.files):
            if self.mac in name.lower():
                return self.files[name]
        return next(iter(self.files.values())) if len(self.files) == 1 else None


def decode_config(mac: str, raw: bytes | str | dict[str, Any]) -> DeviceFiles:
    """Check every file of a config payload against its sha256 and size."""
    if not isinstance(raw, (dict, bytes, str)):
        raise Rejected("payload", "payload must be a JSON object")
    try:
        data = raw if isinstance(raw, dict) else decode_json(raw)
        config = Config.from_json(data if isinstance(data, dict) else raw)
    except PayloadError as exc:
        raise Rejected("payload", str(exc)) from None
    password, previous = _auth(mac, data.get("auth"))
    enrol = _enrol(data.get("enrol"))
    if config.mac and config.mac != mac:
        raise Rejected("payload", f"mac {config.mac!r} does not match the topic's {mac}", "mac")
    if not config.files:
        raise Rejected("payload", "files is empty", "files")
    if not _NOTIFY_PATH.fullmatch(config.notify_path) or config.notify_path.startswith("/") or \
            ".." in config.notify_path.split("/"):
        raise Rejected("payload", f"notify_path {config.notify_path!r} is not a relative URL path",
                       "notify_path")
    files: dict[str, ServedFile] = {}
    for i, f in enumerate(config.files):
        where = f"files[{i}]"
        if not is_file_name(f.name):
            raise Rejected("payload", f"{where}.name {f.name!r} is not a plain file name", f"{where}.name")
        if f.name in files:
            raise Rejected("payload", f"{where}.name {f.name!r} appears twice", f"{where}.name")
        content_type = f.content_type.strip() or "application/octet-stream"
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise Rejected("payload", f"{where}.content_type {f.content_type!r} is not a media type",
                           f"{where}.content_type")
        if len(f.content) > MAX_FILE * 2:
            raise Rejected("payload", f"{where}.content is larger than {MAX_FILE} bytes", f"{where}.content")
        if f.encoding == "utf-8":
            try:
                body = f.content.encode("utf-8")
            except UnicodeEncodeError:
                raise Rejected("payload", f"{where}.content is not valid UTF-8 text", f"{where}.content") from None
        elif f.encoding == "base64":
            try:
                body = base64.b64decode(f.content, validate=True)
            except (binascii.Error, ValueError):
                raise Rejected("payload", f"{where}.content is not valid base64", f"{where}.content") from None
        else:
            raise Rejected("payload", f"{where}.encoding {f.encoding!r} is not utf-8 or base64",
                           f"{where}.encoding")
        digest = hashlib.sha256(body).hexdigest()
        if f.sha256.lower() != digest:
            raise Rejected("checksum", f"{where}.sha256 {f.sha256!r} does not match the content "
                           f"(sha256 {digest})", f"{where}.sha256")
        if f.size != len(body):
            raise Rejected("checksum", f"{where}.size {f.size} does not match the content "
                           f"({len(body)} bytes)", f"{where}.size")
        files[f.name] = ServedFile.make(f.name, content_type, body, digest)
    return DeviceFiles(mac, config.revision, config.vendor, config.model, config.template,
                       config.notify_path, files, password, previous, enrol)


def _secret(value: Any, where: str, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    # it goes into a Digest computation and a quoted string: text without control characters
    if not isinstance(value, str) or not value or _UNQUOTABLE.search(value):
        raise Rejected("payload", f"{where} must be a non-empty string without control characters "
                       "or quotes" + (" (or null)" if nullable else ""), where)
    return value


def _auth(mac: str, auth: Any) -> tuple[str | None, str | None]:
    """The config's ``auth``: the device's HTTP password and the one before it."""
    if auth is None:
        return None, None
    if not isinstance(auth, dict):
        raise Rejected("payload", "auth must be an object", "auth")
    if auth.get("user", mac) != mac:
        raise Rejected("payload", f"auth.user must be the MAC {mac}", "auth.user")
    return _secret(auth.get("password"), "auth.password", False), \
        _secret(auth.get("previous"), "auth.previous", True)


def _enrol(enrol: Any) -> Key | None:
    if enrol is None:
        return None
    if not isinstance(enrol, dict) or not isinstance(enrol.get("assignment"), str) \
            or not isinstance(enrol.get("rearm", ""), str):
        raise Rejected("payload", "enrol must be an object with assignment and rearm strings", "enrol")
    return Key(enrol["assignment"], enrol.get("rearm", ""))
