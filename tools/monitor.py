"""Watch the live event stream: one readable line per message on the broker.

Every message under PNP_TOPIC_PREFIX on PNP_MQTT_URL becomes one line: time, MAC (or service),
event, and the facts that matter (vendor and model, revision, URL, NOTIFY outcome, file and
status, the error's message, the enrolment state and the operators' re-arm/rotate commands).
Passwords (a device's HTTP credential too) and file contents are never printed. A payload that is
not what it should be is shown as such, never fatal. Retained messages (the current state) are
skipped unless --retained; --json prints one JSON object per line instead.

examples:
  pnp monitor
  pnp monitor --mac 000b82f55284 --retained
  pnp monitor --kind notify,fetched,error --json
  pnp monitor --kind enrolment,rearm,rotate,error
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from services import settings as s
from services.textsafe import json_safe, printable
from services.messages import HttpAuth, url_without_secret
from services.topics import DEVICE_KINDS, Topics
from tools.commands import enrolment_words

SETTINGS = [s.MQTT_URL, s.TOPIC_PREFIX]
KINDS = DEVICE_KINDS + ("service", "profile")
_SECRET_KEYS = {"password", "secret", "passwd", "pass", "http_password", "admin_password"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _g(data: Any, key: str, default: str = "") -> str:
    if not isinstance(data, dict):
        return default
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))[:80]
    return str(value)


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(text.split())  # one line, whatever the payload holds
    return text if len(text) <= n else text[: n - 1] + "…"


def redact(data: Any, kind: str | None = None) -> Any:
    """A copy fit for a terminal or a log: passwords masked, file contents dropped."""
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        for k, v in data.items():
            if isinstance(k, str) and k.lower() in _SECRET_KEYS:
                out[k] = "***"
            elif kind == "config" and k == "auth" and isinstance(v, dict):
                # the device's HTTP credential: the current password and the previous one
                out[k] = {ak: "***" if ak in HttpAuth.SECRETS and av is not None else av for ak, av in v.items()}
            elif kind == "config" and k == "content":
                out[k] = f"<{len(v) if isinstance(v, str) else '?'} chars>"
            elif kind == "published" and k == "url" and isinstance(v, str):
                out[k] = url_without_secret(v)  # a working URL downloads the password
            else:
                out[k] = redact(v, kind)
        return out
    if isinstance(data, list):
        return [redact(v, kind) for v in data]
    return data


def describe(kind: str, data: Any) -> str:
    """The key facts of one device payload, in words. ``data`` is parsed JSON (or None for an
    empty payload). Raises nothing for any input."""
    try:
        return _describe(kind, data)
    except Exception as exc:  # a payload shaped like nothing we know: say so, never crash
        return f"unreadable payload ({type(exc).__name__})"


def _describe(kind: str, d: Any) -> str:
    if d is None:
        return {"assignment": "unassigned", "config": "configuration removed",
                "error": "error resolved", "published": "files withdrawn",
                "files": "files withdrawn", "enrolment": "enrolment removed"}.get(kind, "cleared")
    if not isinstance(d, dict):
        return f"unexpected payload: {_clip(json.dumps(d), 80)}"
    if kind == "discovered":
        boot = _g(d, "boot")
        return (f"{_g(d, 'vendor', '?')} {_g(d, 'model', '?')} {_g(d, 'firmware', '?')} "
                f"at {_g(d, 'ip', '?')}:{_g(d, 'port', '?')}" + (f" boot {boot}" if boot else ""))
    if kind == "assignment":
        accounts = found if isinstance(found := d.get("accounts"), list) else []
        users = ",".join(_g(a, "user_id", "?") for a in accounts[:4]) + ("…" if len(accounts) > 4 else "")
        what = " ".join(x for x in (_g(d, "vendor"), _g(d, "model")) if x)
        profile = _g(d, "profile")
        return (f"assigned {what + ' ' if what else ''}{len(accounts)} account(s) {users}".rstrip()
                + (f" profile {profile}" if profile else ""))
    if kind == "config":
        files = found if isinstance(found := d.get("files"), list) else []
        names = ", ".join(f"{_g(f, 'name', '?')} ({_g(f, 'size', '?')} B)" for f in files[:4])
        return f"rendered rev {_g(d, 'revision', '?')} {names} template {_g(d, 'template', '?')}"
    if kind == "files":
        files = found if isinstance(found := d.get("files"), list) else []
        names = ", ".join(f"{_g(f, 'name', '?')} ({_g(f, 'size', '?')} B)" for f in files[:4])
        return f"published rev {_g(d, 'revision', '?')} {names}"
    if kind == "published":  # seen only without the deployment ACL; the URLs themselves are secrets
        url = d.get("url")
        where = f" at {url_without_secret(url)}" if isinstance(url, str) else ""
        enrolling = " (not enrolling: no NOTIFY)" if d.get("enrolling") is False else ""
        return f"download URLs of rev {_g(d, 'revision', '?')}{where} ready for the notifier{enrolling}"
    if kind == "notify":
        code = _g(d, "code")
        rtt = d.get("rtt_ms")
        extra = f" {rtt:.1f} ms" if isinstance(rtt, (int, float)) and not isinstance(rtt, bool) else ""
        reason = _g(d, "reason")
        return (f"NOTIFY {_g(d, 'status', '?')}{(' ' + code) if code else ''}"
                f"{(' ' + reason) if reason and reason != 'OK' else ''} attempt(s) {_g(d, 'attempts', '?')}"
                f"{extra} rev {_g(d, 'revision', '?')} {_g(d, 'kind')}".rstrip())
    if kind == "fetched":
        prov = " PROVISIONED" if d.get("provisioned") is True else ""
        auth = _g(d, "auth")
        return (f"GET {_g(d, 'file', '?')} {_g(d, 'status', '?')} by {_g(d, 'client', '?')}{prov}"
                + (f" with {auth} credentials" if auth else "") + f" ({_clip(_g(d, 'user_agent'), 60)})")
    if kind == "enrolment":
        _, words = enrolment_words(d)
        reason = _g(d, "reason")
        return f"ENROLMENT {words}" + (f": {reason}" if reason else "")
    if kind in ("rearm", "rotate"):
        what = "re-arm" if kind == "rearm" else "credential rotation"
        return f"{what} requested (id {_g(d, 'id', '?')[:12]}) at {_g(d, 'at', '?')}"
    if kind == "error":
        field = _g(d, "field")
        return (f"ERROR {_g(d, 'service', '?')}/{_g(d, 'code', '?')}: {_g(d, 'message', '?')}"
                + (f" [{field}]" if field else ""))
    return _clip(json.dumps(redact(d, kind), sort_keys=True), 120)


def _describe_service(d: Any) -> str:
    if not isinstance(d, dict):
        return "status cleared" if d is None else "unexpected payload"
    counters = found if isinstance(found := d.get("counters"), dict) else {}
    shown = " ".join(f"{k}={v}" for k, v in list(counters.items())[:8])
    return f"{_g(d, 'state', '?')} v{_g(d, 'version', '?')} {shown}".rstrip()


class Formatter:
    """Turns (topic, payload) into a line or a JSON object; holds the filters."""

    def __init__(self, prefix: str, macs: set[str] | None = None, kinds: set[str] | None = None,
                 retained: bool = False, as_json: bool = False) -> None:
        self.topics = Topics(prefix)
        self.macs = macs
        self.kinds = kinds
        self.retained = retained
        self.as_json = as_json

    def line(self, topic: str, raw: bytes, retain: bool, at: str | None = None) -> str | None:
        """The output for one message, or None when the filters drop it."""
        if retain and not self.retained:
            return None
        at = at or _now()
        info = self.topics.parse(topic)
        if info is None and topic.startswith(f"{self.topics.prefix}/services/") and topic.endswith("/retained"):
            return None  # a service's bookkeeping (docs/MQTT.md), not an event
        data, error = None, None
        if raw:
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                error = f"not JSON: {type(exc).__name__}"
        if info is None:
            who, kind = "-", "other"
        elif info.area == "devices":
            who, kind = info.mac or "-", info.kind or "?"
        elif info.area == "services":
            who, kind = f"{info.service}/{info.instance}", "service"
        else:
            who, kind = info.name or "-", "profile"
        if self.kinds and kind not in self.kinds:
            return None
        if self.macs and who not in self.macs:
            return None
        if self.as_json:
            out: dict[str, Any] = {"at": at, "topic": topic, "who": who, "event": kind, "retained": retain}
            if error:
                out["error"] = error
                out["size"] = len(raw)
            else:
                out["data"] = redact(data, kind)
            return json_safe(json.dumps(out, ensure_ascii=False, sort_keys=True))
        if error:
            facts = f"unreadable payload ({error}, {len(raw)} bytes)"
        elif kind == "service":
            facts = _describe_service(data)
        elif kind == "profile":
            facts = "profile removed" if data is None else f"profile updated ({len(data) if isinstance(data, dict) else '?'} keys)"
        elif kind == "other":
            facts = f"{topic} ({len(raw)} bytes)"
        else:
            facts = describe(kind, data)
        mark = " (retained)" if retain else ""
        # topics and payloads are anyone's text: no escape sequence reaches the terminal
        return printable(f"{at}  {who:<12}  {kind:<10}  {_clip(facts, 200)}{mark}")


def watch(url: s.MqttUrl, formatter: Formatter, out: Callable[[str], None], reactor: Any = None) -> Any:
    """Start a Bus that writes each formatted message with ``out``; returns the Bus (stop it)."""
    from services.mqtt import Bus, Incoming
    from tools.mqttclient import client_id

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    # Not a tools.mqttclient.Session: the monitor follows the broker through restarts, as a
    # service does, rather than stopping at the first complaint.
    bus = Bus(url, client_id("monitor"), reactor)

    def on_message(msg: Incoming) -> None:
        try:
            text = formatter.line(msg.topic, msg.raw, msg.retain)
        except Exception as exc:  # the monitor outlives any payload
            text = printable(f"{_now()}  -  ?  {msg.topic}: could not format ({type(exc).__name__})")
        if text is not None:
            out(text)

    bus.subscribe(formatter.topics.everything(), on_message)
    bus.start()
    return bus


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mac", default=None, metavar="LIST", help="only these MACs, comma-separated")
    parser.add_argument("--kind", default=None, metavar="LIST",
                        help=f"only these events, comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--retained", action="store_true",
                        help="also print the retained messages (the current state) when starting")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_arguments(parser, SETTINGS)


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    settings = s.resolve(SETTINGS, args)
    kinds = {k.strip() for k in (args.kind or "").split(",") if k.strip()} or None
    if kinds and kinds - set(KINDS):
        print(f"pnp monitor: --kind: {', '.join(sorted(kinds - set(KINDS)))!r} is not allowed: "
              f"{', '.join(KINDS)}", file=sys.stderr)
        return 2
    macs = {m.strip().lower().replace(":", "") for m in (args.mac or "").split(",") if m.strip()} or None
    formatter = Formatter(settings.topic_prefix, macs, kinds, args.retained, args.json)
    stream = stream or sys.stdout

    def out(text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:  # `pnp monitor | head`: stop quietly
            from twisted.internet import reactor

            if reactor.running:
                reactor.stop()

    from twisted.internet import reactor

    from services.runner import install_stop_signals

    print(f"pnp monitor: watching {settings.topic_prefix}/# on {settings.mqtt_url} (Ctrl-C stops)",
          file=sys.stderr)
    install_stop_signals(reactor)
    reactor.callWhenRunning(lambda: watch(settings.mqtt_url, formatter, out, reactor))
    reactor.run()
    return 0
