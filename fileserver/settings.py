"""The fileserver's settings: ``SETTINGS``, every one it reads besides the common ones."""

from __future__ import annotations

import ipaddress

from services import settings as s


def parse_secret(text: str) -> str:
    # Tokens are only as unguessable as the secret; refuse short ones.
    if len(text) < 16 or any(c.isspace() for c in text):
        raise ValueError
    return text


def parse_bind(text: str) -> str:
    value = text.strip()
    if ipaddress.ip_address(value).version != 4:
        raise ValueError
    return value


def parse_auth(text: str) -> str:
    return s.parse_choice("off", "basic", "digest")(text)


def parse_user(text: str) -> str:
    # A user name goes into "user:password" (Basic) and a quoted string (Digest).
    if not text or ":" in text or '"' in text or any(ord(c) < 32 for c in text):
        raise ValueError
    return text


def parse_password(text: str) -> str:
    if not text or any(ord(c) < 32 for c in text):
        raise ValueError
    return text


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds, or a number with a unit: 90s, 30m, 12h, 3d."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    seconds = float(value[:-1] if unit else value) * (unit or 1)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError
    return seconds


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


FILE_SECRET = s.Setting(
    "file_secret", "PNP_FILE_SECRET",
    "server secret the per-device download paths are derived from (changing it rotates every path)",
    parse_secret, "at least 16 characters without spaces",
    None,  # generated once and kept in the data dir
)
HTTP_BIND = s.Setting(
    "http_bind", "PNP_HTTP_BIND", "IPv4 address the fileserver listens on",
    parse_bind, "an IPv4 address (0.0.0.0 for all)", "0.0.0.0",
)
TLS_CERT = s.Setting(
    "tls_cert", "PNP_TLS_CERT", "PEM certificate (chain) for HTTPS; with PNP_TLS_KEY, HTTPS replaces HTTP",
    s.parse_path, "a file path", None,
)
TLS_KEY = s.Setting(
    "tls_key", "PNP_TLS_KEY", "PEM private key for HTTPS",
    s.parse_path, "a file path", None,
)
HTTP_AUTH = s.Setting(
    "http_auth", "PNP_HTTP_AUTH", "ask phones for credentials before serving their files",
    parse_auth, "off, basic or digest", "off",
)
HTTP_USER = s.Setting(
    "http_user", "PNP_HTTP_USER", "user name phones send when PNP_HTTP_AUTH is on",
    parse_user, "a non-empty name without ':' or '\"'", None,
)
HTTP_PASSWORD = s.Setting(
    "http_password", "PNP_HTTP_PASSWORD", "password phones send when PNP_HTTP_AUTH is on",
    parse_password, "a non-empty password", None,
)
PLAIN_PATHS = s.Setting(
    "plain_paths", "PNP_PLAIN_PATHS",
    "also serve /{file} without the secret path (for phones pointed here by DHCP option 66)",
    s.parse_bool, "true or false", False,
)
PIN_IP = s.Setting(
    "pin_ip", "PNP_PIN_IP",
    "serve a device's bootstrap URL only to the address that discovered it first in its enrolment "
    "and the one that completed its first download (false: to any address while it enrolls)",
    s.parse_bool, "true or false", True,
)
ENROL_WINDOW = s.Setting(
    "enrol_window", "PNP_ENROL_WINDOW",
    "how long a new or changed assignment (or a re-arm) may wait for its phone to be provisioned "
    "through Plug and Play; after it the device's bootstrap URL is closed",
    parse_duration, "seconds, or a number with s, m, h or d (3d)", 3 * 86400.0,
)
NOT_FOUND_LIMIT = s.Setting(
    "not_found_limit", "PNP_404_LIMIT", "404s one client may collect within PNP_404_WINDOW before it is refused",
    s.parse_whole(1, 999_999_999), "a whole number >= 1", 20,
)
NOT_FOUND_WINDOW = s.Setting(
    "not_found_window", "PNP_404_WINDOW", "seconds over which a client's 404s are counted",
    s.parse_positive_float, "a number of seconds > 0", 60.0,
)
BAN_SECONDS = s.Setting(
    "ban_seconds", "PNP_BAN_SECONDS", "how long a client that collected too many 404s is refused",
    s.parse_positive_float, "a number of seconds > 0", 300.0,
)
TRUSTED_PROXIES = s.Setting(
    "trusted_proxies", "PNP_TRUSTED_PROXIES",
    "proxies whose X-Forwarded-For names the client (comma-separated addresses or networks); none by default",
    parse_networks, "IP addresses or networks, comma-separated", (),
)
HTTP_HEAD_TIMEOUT = s.Setting(
    "http_head_timeout", "PNP_HTTP_HEAD_TIMEOUT",
    "seconds a connection may take to send a request's head (request line and headers, TLS "
    "handshake included) before it is closed",
    s.parse_positive_float, "a number of seconds > 0", 10.0,
)
# Twisted's default backlog of 50 overflows when a boot storm's phones all fetch at once: the
# kernel then drops their SYNs and each phone waits a second or more for a retransmission.
HTTP_BACKLOG = s.Setting(
    "http_backlog", "PNP_HTTP_BACKLOG",
    "connections the kernel may queue for the fileserver before it accepts them (its listen "
    "backlog); the kernel caps it at net.core.somaxconn",
    s.parse_whole(1, 65535), "a whole number from 1 to 65535", 4096,
)

SETTINGS = [s.HTTP_PORT, s.PUBLIC_URL, s.SIP_INTERFACE, FILE_SECRET, HTTP_BIND, TLS_CERT, TLS_KEY, HTTP_AUTH, HTTP_USER, HTTP_PASSWORD, PLAIN_PATHS,
       PIN_IP, ENROL_WINDOW, NOT_FOUND_LIMIT, NOT_FOUND_WINDOW, BAN_SECONDS, TRUSTED_PROXIES, HTTP_HEAD_TIMEOUT,
       HTTP_BACKLOG]


def check_tls_pair(values: s.Settings) -> None:
    """A certificate needs its key and a key its certificate (the console's HTTPS too)."""
    if (values.tls_cert is None) != (values.tls_key is None):
        missing = TLS_KEY if values.tls_key is None else TLS_CERT
        raise s.SettingError(missing, "", "required when " +
                             (TLS_CERT.env if missing is TLS_KEY else TLS_KEY.env) + " is set")


def check(values: s.Settings) -> None:
    """Settings that are only wrong together; raises SettingError naming the missing one."""
    check_tls_pair(values)
    if values.http_auth != "off":
        for needed in (HTTP_USER, HTTP_PASSWORD):
            if getattr(values, needed.name) is None:
                raise s.SettingError(needed, "", f"required when {HTTP_AUTH.env} is {values.http_auth}")
