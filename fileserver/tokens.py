"""Per-device secret path segments: unguessable, stable across restarts, rotated with the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_BYTES = 16  # 128 bits: 22 URL-safe characters


def device_token(secret: str, mac: str) -> str:
    """The path segment of ``mac``'s files: HMAC-SHA256 of the MAC under the server secret."""
    digest = hmac.new(secret.encode("utf-8"), b"pnp-device-path\0" + mac.encode("ascii"),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:TOKEN_BYTES]).decode("ascii").rstrip("=")


def load_or_create_secret(path: Path) -> str:
    """The secret kept at ``path``, made on first use (readable by the owner only)."""
    try:
        text = path.read_text("ascii").strip()
        if len(text) >= 32:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    text = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return text
