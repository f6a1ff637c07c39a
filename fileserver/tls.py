"""Listening for phones: plain HTTP, or HTTPS from a PEM certificate (chain) and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

from fileserver import settings as fs
from services import settings as s

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TlsError(ValueError):
    pass


def context_factory(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """TLS options from PEM files; the first certificate is ours, the rest its chain."""
    try:
        cert_pem = Path(cert_path).read_bytes()
        key_pem = Path(key_path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TlsError(f"{cert_path}: no PEM certificate in it")
    try:
        certs = [x509.load_pem_x509_certificate(b) for b in blocks]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{cert_path} / {key_path}: not a usable PEM certificate and key ({exc})") from None
    # Twisted's hints name pyOpenSSL's PKey and X509; pyOpenSSL takes cryptography's objects too
    options = ssl.CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=certs[1:])  # type: ignore[arg-type]
    try:
        options.getContext().check_privatekey()
    except Exception:
        raise TlsError(f"{key_path} is not the key of the certificate in {cert_path}") from None
    return options


def check_tls(values: s.Settings) -> None:
    """Before anything starts: PNP_TLS_CERT and PNP_TLS_KEY, if set, make a usable pair."""
    fs.check_tls_pair(values)
    if values.tls_cert is not None:
        try:
            context_factory(values.tls_cert, values.tls_key)
        except TlsError as exc:
            raise s.SettingError(fs.TLS_CERT, str(values.tls_cert), str(exc)) from None


def listen(reactor: Any, site: Any, port: int, interface: str,
           cert: Path | None = None, key: Path | None = None,
           backlog: int = fs.HTTP_BACKLOG.default) -> Any:
    """The port phones connect to; ``backlog`` is PNP_HTTP_BACKLOG (Twisted's 50 overflows)."""
    if cert is not None and key is not None:
        return reactor.listenSSL(port, site, context_factory(cert, key), backlog=backlog,
                                 interface=interface)
    return reactor.listenTCP(port, site, backlog=backlog, interface=interface)
