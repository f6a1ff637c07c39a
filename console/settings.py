"""The console's settings: ``SETTINGS``, every one it reads besides the common ones. HTTPS
takes the fileserver's PNP_TLS_CERT / PNP_TLS_KEY."""

from __future__ import annotations

from console.users import parse_users
from fileserver import settings as fs
from services import settings as s


def parse_admin_password(text: str) -> str:
    # Never refused: a refusal would print the value, and this one is a password.
    return text


CONSOLE_BIND = s.Setting(
    "console_bind", "PNP_CONSOLE_BIND", "IPv4 address the console listens on",
    fs.parse_bind, "an IPv4 address (0.0.0.0 for all)", "127.0.0.1",
)
CONSOLE_PORT = s.Setting(
    "console_port", "PNP_CONSOLE_PORT", "TCP port of the console (HTTP, or HTTPS with PNP_TLS_CERT)",
    s.parse_port, "a port number 1-65535", 8090,
)
CONSOLE_USERS = s.Setting(
    "console_users", "PNP_CONSOLE_USERS",
    "who may log in: NAME:ROLE:HASH entries, comma-separated (`pnp console-user` prints one)",
    parse_users, "entries NAME:ROLE:HASH with ROLE viewer or admin and HASH from `pnp console-user`", {},
)
CONSOLE_ADMIN_PASSWORD = s.Setting(
    "console_admin_password", "PNP_CONSOLE_ADMIN_PASSWORD",
    "password of the console user 'admin' (`pnp setup` generates one); hashed at start",
    parse_admin_password, "any text", None,
)

SETTINGS = [CONSOLE_BIND, CONSOLE_PORT, CONSOLE_USERS, CONSOLE_ADMIN_PASSWORD, fs.TLS_CERT, fs.TLS_KEY]
