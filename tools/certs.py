"""Make a self-signed HTTPS certificate and key for the fileserver (for a lab, not production).

Writes a PEM certificate and an owner-only PEM key, with every --host as a subject alternative
name (IP addresses and DNS names), then prints the PNP_TLS_CERT / PNP_TLS_KEY lines to use.
Phones that check certificates need this certificate (or your own CA's) installed.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cert", default="var/tls/cert.pem", metavar="PATH",
                        help="where to write the certificate [default: var/tls/cert.pem]")
    parser.add_argument("--key", default="var/tls/key.pem", metavar="PATH",
                        help="where to write the private key [default: var/tls/key.pem]")
    parser.add_argument("--host", action="append", metavar="NAME_OR_IP",
                        help="a name or address phones use to reach the fileserver; repeat for "
                             "more [default: 127.0.0.1 and localhost]")
    parser.add_argument("--days", type=int, default=825, help="validity in days [default: 825]")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def make_pair(hosts: list[str], days: int = 825) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``hosts`` and its key, both PEM. RSA 2048: what older
    phone firmware still accepts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pnp lab")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def run(args: argparse.Namespace) -> int:
    hosts = args.host or ["127.0.0.1", "localhost"]
    if not 1 <= args.days <= 3650:
        print("pnp tls-cert: --days must be between 1 and 3650", file=sys.stderr)
        return 2
    cert_path, key_path = Path(args.cert), Path(args.key)
    for path in (cert_path, key_path):
        if path.exists() and not args.force:
            print(f"pnp tls-cert: {path} exists (use --force to overwrite)", file=sys.stderr)
            return 1
    cert_pem, key_pem = make_pair(hosts, args.days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    print(f"wrote {cert_path} and {key_path} for {', '.join(hosts)}")
    print(f"PNP_TLS_CERT={cert_path.resolve()}")
    print(f"PNP_TLS_KEY={key_path.resolve()}")
    return 0
