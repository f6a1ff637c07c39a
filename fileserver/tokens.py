"""Per-device secret path segments: unguessable, stable across restarts, new with each enrolment
epoch (an old URL dies with its epoch) and rotated with the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from services.settings import UnusableFile
from services.store import private_dir, private_file

TOKEN_BYTES = 16  # 128 bits: 22 URL-safe characters


def device_token(secret: str, mac: str, epoch: int) -> str:
    """The path segment of ``mac``'s files in enrolment ``epoch``: HMAC-SHA256 of both under the
    server secret."""
    digest = hmac.new(secret.encode("utf-8"),
                      b"pnp-device-path\0" + mac.encode("ascii") + b"\0%d" % epoch,
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:TOKEN_BYTES]).decode("ascii").rstrip("=")


SECRET_MIN = 32


class SecretError(UnusableFile):
    """The secret file exists but cannot be used; the message names it and says what to do."""


def load_or_create_secret(path: Path) -> str:
    """The secret kept at ``path``, made on first use (readable by the owner only).

    One that exists but cannot be read or is damaged raises :class:`SecretError`: replacing it
    would change every device's URL without a word."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise SecretError(_unusable(path, f"cannot be read ({exc.strerror or exc})")) from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecretError(_unusable(path, "is damaged (not ASCII text)")) from None
    if len(text) < SECRET_MIN or any(c.isspace() or not c.isprintable() for c in text):
        raise SecretError(_unusable(path, f"is damaged (not one word of at least {SECRET_MIN} "
                                          "characters)"))
    private_file(path)
    return text


def _unusable(path: Path, what: str) -> str:
    return (f"the file secret {path} {what}; restore it from a backup (or, to give every device "
            "a new URL, remove it and a new one is made)")


def _create(path: Path) -> str:
    private_dir(path.parent)
    text = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        # on disk before it is named: a crash must not leave an empty secret behind
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return text
