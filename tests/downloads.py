"""A device's file as its phone gets it: the bootstrap URL while the device is enrolling, else
the credentialed URL (``{PNP_PUBLIC_URL}c/{name}``) with the device's own Digest credentials,
taken from its retained config's ``auth`` (docs/FILESERVER.md)."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit


def credentialed_url(bootstrap_url: str) -> str:
    """``http://host:port/prefix/p/{token}/{name}`` -> ``http://host:port/prefix/c/{name}``."""
    parts = urlsplit(bootstrap_url)
    head, _, name = parts.path.rpartition("/")
    prefix = head.rpartition("/p/")[0]
    return f"{parts.scheme}://{parts.netloc}{prefix}/c/{name}"


def download(url: str, mac: str, config: dict | None, timeout: float = 5) -> bytes:
    """The body of ``url``; when its bootstrap URL is closed (403: the device is provisioned),
    the same file with the device's credentials. Raises urllib's errors otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.read()
    except urllib.error.HTTPError as exc:
        auth = (config or {}).get("auth") or {}
        if exc.code != 403 or not auth.get("password"):
            raise
    target = credentialed_url(url)
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, target, mac, auth["password"])
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(manager))
    with opener.open(target, timeout=timeout) as answer:
        return answer.read()
