"""Settings from flags or ``PNP_*`` environment variables, validated before anything starts.

A flag wins over the environment, the environment over the default. A bad value raises
:class:`SettingError`, whose one-line message names the setting, the value and what is allowed;
the command line turns it into exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit


class SettingError(Exception):
    """A setting's value is not allowed. ``str()`` is the whole one-line message."""

    def __init__(self, setting: "Setting", value: str, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting.env} ({setting.flag}): {value!r} is not allowed: {allowed}")


class UnusableFile(SettingError):
    """A file the settings lead to (a secret) exists but cannot be used: like a bad setting,
    one line naming it and exit status 2, before anything starts."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


@dataclass(frozen=True)
class MqttUrl:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        # Never print the password: this string goes into logs.
        auth = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{auth}{self.host}:{self.port}"


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    help: str
    parse: Callable[[str], Any]
    # what the error message says is allowed
    allowed: str
    # a value, or a callable taking the settings resolved so far (for derived defaults)
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Settings:
    """Resolved settings, read as attributes (``settings.http_port``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_env(self, definitions: Iterable[Setting]) -> dict[str, str]:
        """The settings as ``PNP_*`` variables, for child processes."""
        env = {}
        for s in definitions:
            value = self._values.get(s.name)
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[s.env] = str(value)
        return env

    def replace(self, **changes: Any) -> "Settings":
        return Settings({**self._values, **changes})


# --- parsers: each raises ValueError for a bad value -----------------------------------------


def parse_mqtt_url(text: str) -> MqttUrl:
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError
    try:
        port = parts.port
    except ValueError:
        raise ValueError from None
    if port is None:
        port = 8883 if parts.scheme == "mqtts" else 1883
    if not 0 < port < 65536:
        raise ValueError
    return MqttUrl(
        parts.scheme,
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def parse_whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``, in plain digits (no sign, no ``_``)."""
    digits = re.compile(r"[0-9]{1,%d}" % len(str(high)))

    def parse(text: str) -> int:
        if not digits.fullmatch(text.strip()):
            raise ValueError
        value = int(text)
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


parse_port = parse_whole(1, 65535)


def parse_topic_prefix(text: str) -> str:
    if not text or text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError
    if any(c in text for c in "+#\0"):
        raise ValueError
    return text


def parse_sip_interface(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise ValueError
    if items == ("all",):
        return items
    names = {name for _, name in socket.if_nameindex()}
    for item in items:
        try:
            if ipaddress.ip_address(item).version != 4:
                raise ValueError
            continue
        except ValueError:
            pass
        if item not in names:
            raise ValueError
    return items


def parse_http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    try:
        parts.port
    except ValueError:
        raise ValueError from None
    return text if text.endswith("/") else text + "/"


def parse_instance(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", text):
        raise ValueError
    return text


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError


def parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError
    return value


def parse_path(text: str) -> Path:
    if not text or "\0" in text:
        raise ValueError
    return Path(text)


def _default_public_url(values: Mapping[str, Any]) -> str:
    from services import netif

    host = netif.first_address(values.get("sip_interface", SIP_INTERFACE.default))
    return f"http://{host}:{values.get('http_port', HTTP_PORT.default)}/"


# --- the contract's settings -----------------------------------------------------------------

MQTT_URL = Setting(
    "mqtt_url", "PNP_MQTT_URL", "MQTT broker URL",
    parse_mqtt_url, "mqtt://[user:pass@]host:port or mqtts://...", "mqtt://127.0.0.1:1883",
)
TOPIC_PREFIX = Setting(
    "topic_prefix", "PNP_TOPIC_PREFIX", "root of every topic",
    parse_topic_prefix, "a topic path without wildcards or leading/trailing '/'", "pnp",
)
SIP_INTERFACE = Setting(
    "sip_interface", "PNP_SIP_INTERFACE",
    "where the listener joins the multicast group and the notifier sends from",
    parse_sip_interface, "IPv4 addresses or interface names, comma-separated, or 'all'",
    ("127.0.0.1",),
)
SIP_PORT = Setting(
    "sip_port", "PNP_SIP_PORT", "UDP port of the multicast group",
    parse_port, "a port number 1-65535", 5060,
)
HTTP_PORT = Setting(
    "http_port", "PNP_HTTP_PORT", "fileserver's HTTP port",
    parse_port, "a port number 1-65535", 8080,
)
PUBLIC_URL = Setting(
    "public_url", "PNP_PUBLIC_URL", "base URL the phones are told to fetch from",
    parse_http_url, "an http:// or https:// URL", _default_public_url,
)
DATA_DIR = Setting(
    "data_dir", "PNP_DATA_DIR", "where each service keeps its own database",
    parse_path, "a directory path", Path("./var"),
)
INSTANCE = Setting(
    "instance", "PNP_INSTANCE", "this instance's name in status topics",
    parse_instance, "1-63 letters, digits, '.', '_' or '-'",
    lambda _values: re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:63] or "pnp",
)
LOG_FORMAT = Setting(
    "log_format", "PNP_LOG_FORMAT", "log lines as text or JSON (auto: JSON unless a terminal)",
    parse_choice("auto", "text", "json"), "auto, text or json", "auto",
)
STATUS_INTERVAL = Setting(
    "status_interval", "PNP_STATUS_INTERVAL", "seconds between status refreshes",
    parse_positive_float, "a number of seconds > 0", 30.0,
)

# What every service takes.
COMMON = [MQTT_URL, TOPIC_PREFIX, DATA_DIR, INSTANCE, LOG_FORMAT, STATUS_INTERVAL]
# All of the contract's settings, in the contract's order.
CONTRACT = [MQTT_URL, TOPIC_PREFIX, SIP_INTERFACE, SIP_PORT, HTTP_PORT, PUBLIC_URL, DATA_DIR, INSTANCE]


def add_arguments(parser: argparse.ArgumentParser, definitions: Iterable[Setting]) -> None:
    """Add one ``--flag`` per setting; values stay raw strings until :func:`resolve`."""
    for s in definitions:
        default = s.default
        shown = "derived" if callable(default) else (
            ",".join(default) if isinstance(default, tuple) else default)
        parser.add_argument(
            s.flag, dest=s.name, default=None, metavar="VALUE",
            help=f"{s.help} [{s.env}; default: {shown}]",
        )


def resolve(
    definitions: Iterable[Setting],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve each setting from a flag, else the environment, else its default."""
    environ = os.environ if environ is None else environ
    flags = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: dict[str, Any] = {}
    deferred = []
    for s in _unique(definitions):
        raw = flags.get(s.name)
        if raw is None:
            raw = environ.get(s.env)
        if raw is None or raw == "":
            if callable(s.default):
                deferred.append(s)
            elif isinstance(s.default, str):
                # a default written as text means what the same text means in a flag
                values[s.name] = s.parse(s.default)
            else:
                values[s.name] = s.default
            continue
        try:
            values[s.name] = s.parse(str(raw))
        except ValueError:
            raise SettingError(s, str(raw), s.allowed) from None
    for s in deferred:
        values[s.name] = s.default(values)
    return Settings(values)


def _unique(definitions: Iterable[Setting]) -> list[Setting]:
    seen: dict[str, Setting] = {}
    for s in definitions:
        seen.setdefault(s.name, s)
    return list(seen.values())
