"""HTTP Basic and Digest authentication of phones, without I/O.

Grandstream phones take credentials in their config server path and answer a 401 challenge
with Basic or Digest (MD5). One user and password for every phone: the per-device secret path
stays the main protection, the credentials keep a leaked URL from being enough on its own.
Digest nonces are twisted.cred's: HMAC-protected, bound to the client address, 15 minutes.

:class:`DeviceDigest` is the credentialed URL's: Digest (MD5, qop=auth) where the user name is
the device's MAC and the password its own, from its config's ``auth`` (docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac

from typing import Any, Iterable

from twisted.cred import error
from twisted.cred.credentials import DigestCredentialFactory

REALM = "pnp"


class Authenticator:
    def __init__(self, scheme: str, user: str, password: str, realm: str = REALM) -> None:
        if scheme not in ("basic", "digest"):
            raise ValueError(f"unknown auth scheme {scheme!r}")
        self.scheme = scheme
        self.user = user
        self.password = password
        self.realm = realm
        self._digest = DigestCredentialFactory(b"md5", realm.encode("utf-8"))

    def challenge(self, client: str) -> str:
        """The ``WWW-Authenticate`` value of a 401 for ``client``."""
        if self.scheme == "basic":
            return f'Basic realm="{self.realm}", charset="UTF-8"'
        return _digest_challenge(self._digest, self.realm, client)

    def check(self, authorization: bytes | None, method: bytes, uri: bytes, client: str) -> bool:
        """True when the ``Authorization`` value proves the configured credentials."""
        if not authorization:
            return False
        scheme, _, rest = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic" and self.scheme == "basic":
            return self._check_basic(rest.strip())
        if scheme == b"digest" and self.scheme == "digest":
            return self._check_digest(rest, method, uri, client)
        return False

    def _check_basic(self, token: bytes) -> bool:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        # Both compared, always: no early exit telling which one was wrong.
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return ok_user and ok_password

    def _check_digest(self, fields: bytes, method: bytes, uri: bytes, client: str) -> bool:
        try:
            creds = self._digest.decode(fields, method, client.encode("ascii", "replace"))
        except (error.LoginFailed, ValueError, TypeError, KeyError):
            return False
        if creds is None or creds.username != self.user.encode("utf-8"):
            return False
        # The digest covers its own "uri" field; it must be the request we are answering.
        if creds.fields.get("uri") != uri:
            return False
        try:
            return bool(creds.checkPassword(self.password.encode("utf-8")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return False


def _digest_challenge(factory: DigestCredentialFactory, realm: str, client: str) -> str:
    c = factory.getChallenge(client.encode("ascii", "replace"))
    return (f'Digest realm="{realm}", qop="auth", algorithm=MD5, '
            f'nonce="{c["nonce"].decode()}", opaque="{c["opaque"].decode()}"')


class DeviceDigest:
    """Digest of the credentialed URL: whose credentials a request carries, and whether they
    prove one of that device's passwords."""

    def __init__(self, realm: str = REALM) -> None:
        self.realm = realm
        self._digest = DigestCredentialFactory(b"md5", realm.encode("utf-8"))

    def challenge(self, client: str) -> str:
        return _digest_challenge(self._digest, self.realm, client)

    def credentials(self, authorization: bytes, method: bytes, uri: bytes, client: str) -> Any:
        """The Digest credentials of an ``Authorization`` value for this request, or None when it
        is no Digest, names a stale or foreign nonce, or covers another URI."""
        scheme, _, rest = authorization.strip().partition(b" ")
        if scheme.lower() != b"digest":
            return None
        try:
            creds = self._digest.decode(rest, method, client.encode("ascii", "replace"))
        except (error.LoginFailed, ValueError, TypeError, KeyError):
            return None
        if creds is None or creds.fields.get("uri") != uri:
            return None
        return creds

    @staticmethod
    def user(creds: Any) -> str:
        return creds.username.decode("utf-8", "replace") if isinstance(creds.username, bytes) else ""

    @staticmethod
    def proves(creds: Any, passwords: Iterable[str]) -> bool:
        for password in passwords:
            try:
                if creds.checkPassword(password.encode("utf-8")):
                    return True
            except (ValueError, TypeError, KeyError, AttributeError):
                return False
        return False
