"""Prepare a compose deployment: .env with random passwords, and the broker's password file.

Reads .env.example, keeps every value an existing .env already has, fills each empty secret
(MQTT_PASSWORD_<USER>, PNP_FILE_SECRET, PNP_CONSOLE_ADMIN_PASSWORD) with a random one, and writes .env (mode 0600). Then
writes deploy/mosquitto/passwd with one mosquitto 2.0 hash ($7$, PBKDF2-SHA512) per broker user.
PNP_INSTANCE gets the host name when empty; --sip-interface (and --public-url, else derived from
the interface's address) set where the phones are. Run it again after an upgrade: new keys are
added, existing values stay. --rotate USER gives USER a new password.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import string
import sys
from collections.abc import Set
from pathlib import Path

from services import netif
from services import settings as s

# mosquitto 2.0's password file format: $7$<iterations>$<base64 salt>$<base64 digest>
HASH_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_PREFIX = "MQTT_PASSWORD_"
# The uid/gid the eclipse-mosquitto image runs as; it must be able to read the password file.
MOSQUITTO_UID = 1883
_SECRET_KEYS = re.compile(rf"{PASSWORD_PREFIX}[A-Z0-9_]+|PNP_FILE_SECRET|PNP_CONSOLE_ADMIN_PASSWORD")
_LINE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A mosquitto 2.0 password hash, as mosquitto_passwd writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ITERATIONS)
    return f"$7${HASH_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return secrets.compare_digest(want, got)


_ALPHABET = string.ascii_letters + string.digits


def new_secret(length: int = 32) -> str:
    # Letters and digits only (about 190 bits): the password goes unquoted into PNP_MQTT_URL,
    # .env, YAML and command lines.
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match:
            value = match.group(2).strip()
            # compose takes KEY="value" and KEY='value' as value; so must the password file
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[match.group(1)] = value
    return values


def _filled(key: str, value: str, rotate: Set[str]) -> str:
    """``value``, or a new secret for an empty (or rotated) secret key, or the host name for an
    empty PNP_INSTANCE."""
    if _SECRET_KEYS.fullmatch(key) and (not value or key in rotate):
        return new_secret()
    if key == s.INSTANCE.env and not value:
        return s.INSTANCE.default({})
    return value


def render_env(example: str, current: dict[str, str], rotate: Set[str] = frozenset(),
               overrides: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The example's lines with values from ``current`` (``overrides`` win), empty secrets
    filled in. Keys only ``current`` has (the operator's own additions) are kept at the end."""
    out: list[str] = []
    values: dict[str, str] = {}
    current = {**current, **(overrides or {})}
    for line in example.splitlines():
        match = _LINE.fullmatch(line)
        if not match or line.lstrip().startswith("#"):
            out.append(line)
            continue
        key, default = match.group(1), match.group(2).strip()
        values[key] = _filled(key, current.get(key, default), rotate)
        out.append(f"{key}={values[key]}")
    # e.g. a broker user added for another system: MQTT_PASSWORD_CRM= gets a password too
    extra = {k: _filled(k, v, rotate) for k, v in current.items() if k not in values}
    if extra:
        out += ["", "# kept from the previous .env"] + [f"{k}={v}" for k, v in extra.items()]
        values.update(extra)
    return "\n".join(out) + "\n", values


def broker_users(values: dict[str, str]) -> dict[str, str]:
    """user name -> password, from the MQTT_PASSWORD_<USER> keys."""
    return {k[len(PASSWORD_PREFIX):].lower(): v for k, v in values.items()
            if k.startswith(PASSWORD_PREFIX) and v}


def render_passwd(users: dict[str, str]) -> str:
    return "".join(f"{user}:{hash_password(pw)}\n" for user, pw in sorted(users.items()))


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("."),
                        help="the checkout holding compose.yaml and .env.example [default: .]")
    parser.add_argument("--rotate", action="append", default=[], metavar="USER",
                        help="give this broker user a new password (repeatable; 'all' for every user)")
    parser.add_argument("--sip-interface", metavar="VALUE",
                        help="set PNP_SIP_INTERFACE: the interface(s) or address(es) facing the phones")
    parser.add_argument("--public-url", metavar="URL",
                        help="set PNP_PUBLIC_URL [default with --sip-interface: "
                        "http://<its address>:<PNP_HTTP_PORT>/]")


def where_phones_are(args: argparse.Namespace, current: dict[str, str]) -> dict[str, str]:
    """The .env values --sip-interface and --public-url set; SettingError for bad ones."""
    changes: dict[str, str] = {}
    if args.sip_interface:
        interfaces = s.resolve([s.SIP_INTERFACE], {"sip_interface": args.sip_interface}, {}).sip_interface
        changes[s.SIP_INTERFACE.env] = ",".join(interfaces)
        if not args.public_url:
            port = current.get(s.HTTP_PORT.env) or str(s.HTTP_PORT.default)
            changes[s.PUBLIC_URL.env] = f"http://{netif.first_address(interfaces)}:{port}/"
    if args.public_url:
        changes[s.PUBLIC_URL.env] = s.resolve([s.PUBLIC_URL], {"public_url": args.public_url}, {}).public_url
    return changes


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    example_path, env_path = root / ".env.example", root / ".env"
    passwd_path = root / "deploy" / "mosquitto" / "passwd"
    if not example_path.exists():
        print(f"pnp setup: {example_path} not found (run it in the checkout, or pass --dir)", file=sys.stderr)
        return 2
    example = example_path.read_text()
    current = read_env(env_path)
    known = {m.group(1) for m in map(_LINE.fullmatch, example.splitlines()) if m}
    users = {k[len(PASSWORD_PREFIX):].lower() for k in {*known, *current} if k.startswith(PASSWORD_PREFIX)}
    rotate = set()
    for user in args.rotate:
        if user == "all":
            rotate |= {PASSWORD_PREFIX + u.upper() for u in users}
        elif user.lower() in users:
            rotate.add(PASSWORD_PREFIX + user.upper())
        else:
            print(f"pnp setup: --rotate {user!r}: not a broker user ({', '.join(sorted(users))})",
                  file=sys.stderr)
            return 2
    text, values = render_env(example, current, rotate, where_phones_are(args, current))
    _write(env_path, text, 0o600)
    _write(passwd_path, render_passwd(broker_users(values)), 0o640 if os.geteuid() == 0 else 0o644)
    if os.geteuid() == 0:
        os.chown(passwd_path, MOSQUITTO_UID, MOSQUITTO_UID)
        # mosquitto >= 2.0.17 warns (and later versions refuse) when the password or ACL file
        # is world-readable or not owned by the user it runs as; git checks the ACL out 0644.
        acl_path = root / "deploy" / "mosquitto" / "acl"
        if acl_path.exists():
            os.chown(acl_path, MOSQUITTO_UID, MOSQUITTO_UID)
            os.chmod(acl_path, 0o640)
    added = sorted(k for k in values if k not in current)
    print(f"wrote {env_path} ({len(added)} new: {', '.join(added) or 'none'})")
    print(f"wrote {passwd_path} for {', '.join(sorted(broker_users(values)))}")
    if rotate:
        print("rotated: " + ", ".join(sorted(r[len(PASSWORD_PREFIX):].lower() for r in rotate))
              + "; now `docker compose kill -s HUP mosquitto` (reloads the password file), then "
              "`docker compose up -d` (recreates the services whose password changed)")
    return 0
