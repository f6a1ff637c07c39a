"""Console users: who may log in, with which role, checked against a stored scrypt hash.

``PNP_CONSOLE_USERS`` holds entries ``NAME:ROLE:HASH`` separated by commas or white space;
ROLE is ``viewer`` or ``admin``; HASH is ``scrypt.N.r.p.SALT.DIGEST`` (SALT and DIGEST in
unpadded base64url), as ``pnp console-user NAME --role ROLE`` prints it. The alphabet avoids
``$``, which compose would expand in .env. ``PNP_CONSOLE_ADMIN_PASSWORD`` (what ``pnp setup``
generates) adds the user ``admin``; the console hashes it at start and keeps only the hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

ROLES = ("viewer", "admin")
# RFC 7914's interactive-login parameters: 16 MiB of memory and ~50 ms per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
DIGEST_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HASH = re.compile(r"scrypt\.(\d{1,7})\.(\d{1,3})\.(\d{1,3})\.([A-Za-z0-9_-]{16,})\.([A-Za-z0-9_-]{32,})")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hashed: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=DIGEST_BYTES)
    return f"scrypt.{SCRYPT_N}.{SCRYPT_R}.{SCRYPT_P}.{_b64(salt)}.{_b64(digest)}"


def verify_password(password: str, hashed: str) -> bool:
    match = _HASH.fullmatch(hashed)
    if not match:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    # A hash from the environment chooses the cost; refuse ones that would stall the console.
    if n > 2**20 or n < 2 or n & (n - 1) or r * p > 64:
        return False
    want = _unb64(match.group(5))
    try:
        got = hashlib.scrypt(password.encode(), salt=_unb64(match.group(4)), n=n, r=r, p=p,
                             dklen=len(want), maxmem=2**31 - 1)
    except (ValueError, MemoryError):
        return False
    return secrets.compare_digest(want, got)


def parse_users(text: str) -> dict[str, User]:
    """The users of ``PNP_CONSOLE_USERS``; ValueError names the first bad entry."""
    users: dict[str, User] = {}
    for entry in re.split(r"[\s,]+", text.strip()):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ValueError(f"{entry[:20]!r}…: not NAME:ROLE:HASH")
        name, role, hashed = parts
        if not _NAME.fullmatch(name):
            raise ValueError(f"user {name[:20]!r}: names are 1-64 of A-Z a-z 0-9 _ . @ -")
        if role not in ROLES:
            raise ValueError(f"user {name}: role {role!r} is not viewer or admin")
        if not _HASH.fullmatch(hashed):
            raise ValueError(f"user {name}: not a hash from `pnp console-user`")
        if name in users:
            raise ValueError(f"user {name} appears twice")
        users[name] = User(name, role, hashed)
    return users


# What an unknown user name is checked against, so that it costs as long as a known one.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
