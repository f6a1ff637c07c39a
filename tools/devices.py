"""Every device the broker knows, one line each: MAC, vendor, model, firmware, IP, where it stands.

Read from the retained topics under PNP_TOPIC_PREFIX/devices/ on PNP_MQTT_URL; nothing is
stored anywhere else. A broker that lost its last seconds still lists every device: the services
put back the config, published, notify and discovered messages it lost (docs/MQTT.md). Where a device stands is the furthest step of the flow its retained
messages show for its current configuration revision:

  awaiting-assignment  seen (discovered), no assignment yet
  assigned             pre-staged: an assignment, the phone not seen, nothing rendered yet
  discovered           seen and assigned, configuration not rendered yet
  rendered             configuration rendered (config), not yet served
  published            files served (published), NOTIFY not yet accepted
  notified             the phone answered the NOTIFY 200
  fetched              the phone downloaded its file
  provisioned          the phone came back after its reboot and got the same file
  error                a service reports a problem (its message is shown), or the NOTIFY
                       was rejected or timed out

ENROLMENT, from the fileserver's retained `enrolment` (docs/MQTT.md), says whether Plug and Play
may provision the device now: `enrolling until …` (its window; the address it is bound to or
was first seen at), `provisioned`, `conflict A and B` (two addresses asked: nothing is served
until `pnp assign --rearm MAC`), `expired …` (not provisioned within PNP_ENROL_WINDOW: re-arm
it), `-` when the fileserver has published none.

examples:
  pnp devices
  pnp devices --stage error
  pnp devices --vendor yealink --json
  pnp devices --enrolment conflict,expired
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from services import settings as s
from services.textsafe import printable
from services.topics import Topics, is_device_topic, is_mac
from tools.commands import enrolment_words

SETTINGS = [s.MQTT_URL, s.TOPIC_PREFIX]
STAGES = ("awaiting-assignment", "assigned", "discovered", "rendered", "published", "notified",
          "fetched", "provisioned", "error")
ENROLMENT_STATES = ("enrolling", "provisioned", "expired", "conflict")


@dataclass
class Device:
    mac: str
    vendor: str = ""
    model: str = ""
    firmware: str = ""
    ip: str = ""
    stage: str = "discovered"
    detail: str = ""
    revision: int | None = None
    updated_at: str = ""  # the newest time any of its payloads carries
    enrolment: str = ""  # the fileserver's enrolment state ("" when none is retained)
    enrolment_detail: str = ""  # the same in words: until when, which addresses
    topics: list[str] = field(default_factory=list)  # which kinds are retained


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _rev(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fold(mac: str, payloads: dict[str, Any]) -> Device:
    """One device from its retained payloads by kind (parsed JSON; anything else is tolerated:
    a payload that is not an object counts as present but says nothing)."""
    d = Device(mac, topics=sorted(payloads))
    disc = _obj(payloads.get("discovered"))
    assign = _obj(payloads.get("assignment"))
    config = _obj(payloads.get("config"))
    # files is what an operator login may read; without the ACL published says the same (and URLs)
    pub = _obj(payloads.get("files") or payloads.get("published"))
    notify = _obj(payloads.get("notify"))
    fetched = _obj(payloads.get("fetched"))
    error = _obj(payloads.get("error"))
    if "enrolment" in payloads:
        d.enrolment, d.enrolment_detail = enrolment_words(payloads["enrolment"])

    d.vendor = _text(disc.get("vendor") or assign.get("vendor") or config.get("vendor") or pub.get("vendor"))
    d.model = _text(disc.get("model") or assign.get("model") or config.get("model"))
    d.firmware = _text(disc.get("firmware"))
    d.ip = _text(disc.get("ip"))
    enrolment = _obj(payloads.get("enrolment"))
    times = [_text(p.get(k)) for p, k in ((disc, "seen_at"), (notify, "at"), (fetched, "at"), (error, "at"),
                                          (enrolment, "at"))]
    d.updated_at = max((t for t in times if t), default="")

    latest = _rev(config.get("revision")) or _rev(pub.get("revision"))
    d.revision = latest

    def current(p: dict[str, Any]) -> bool:
        # A step of an older revision says nothing about the configuration served now.
        rev = _rev(p.get("revision"))
        return bool(p) and (latest is None or rev is None or rev == latest)

    seen = "discovered" in payloads
    if seen:
        d.stage, d.detail = "awaiting-assignment", f"seen {_text(disc.get('seen_at'))}".strip()
    if "assignment" in payloads:
        d.stage = "discovered" if seen else "assigned"
        d.detail = "assigned, waiting for the generator"
    if config:
        files = [_text(f.get("name")) for f in config.get("files") or [] if isinstance(f, dict)]
        d.stage, d.detail = "rendered", f"rev {latest}: {', '.join(files)}"
    if current(pub):
        names = [_text(f.get("name")) for f in pub.get("files") or [] if isinstance(f, dict)]
        d.stage, d.detail = "published", f"rev {_text(pub.get('revision'))}: {', '.join(names)}"
        if not seen and d.enrolment not in ("expired", "conflict"):
            d.detail += " (waiting for the phone to boot)"
    if current(notify):
        status = _text(notify.get("status"))
        if status == "accepted":
            d.stage, d.detail = "notified", f"NOTIFY accepted {_text(notify.get('at'))}".strip()
        elif status in ("rejected", "timeout"):
            code = notify.get("code")
            why = " ".join(x for x in (_text(code), _text(notify.get("reason"))) if x)
            d.stage = "error"
            d.detail = (f"NOTIFY {status}" + (f": {why}" if why else "")
                        + f" after {_text(notify.get('attempts'))} attempt(s)")
        elif status == "sent":
            d.detail = f"NOTIFY sent {_text(notify.get('at'))}, no answer yet"
    if current(fetched):  # the phone has its file: a lost NOTIFY answer no longer matters
        name = _text(fetched.get("file"))
        if fetched.get("provisioned") is True:
            d.stage, d.detail = "provisioned", f"{name} checked after reboot {_text(fetched.get('at'))}"
        else:
            d.stage, d.detail = "fetched", f"{name} HTTP {_text(fetched.get('status'))} {_text(fetched.get('at'))}"
    if d.enrolment == "expired" and d.stage != "provisioned":
        # the phone that boots now gets no URL: what it waits for is an operator
        d.detail += f" (enrolment expired: pnp assign --rearm {mac})"
    if "error" in payloads:
        service = _text(error.get("service")) or "?"
        message = _text(error.get("message")) or _text(error.get("_error")) or "(unreadable error payload)"
        field_name = _text(error.get("field"))
        d.stage = "error"
        d.detail = f"{service}: {message}" + (f" [{field_name}]" if field_name else "")
    return d


def fold_all(retained: dict[str, dict[str, Any]]) -> list[Device]:
    return [fold(mac, payloads) for mac, payloads in sorted(retained.items())]


def select(devices: Iterable[Device], stages: set[str] | None = None, vendor: str | None = None,
           mac: str | None = None, enrolment: set[str] | None = None) -> list[Device]:
    out = []
    for d in devices:
        if stages and d.stage not in stages:
            continue
        if enrolment and d.enrolment not in enrolment:
            continue
        if vendor and d.vendor.lower() != vendor.lower():
            continue
        if mac and mac.lower().replace(":", "").replace("-", "") not in d.mac:
            continue
        out.append(d)
    return out


def table(devices: list[Device]) -> str:
    cols = ("MAC", "VENDOR", "MODEL", "FIRMWARE", "IP", "STAGE", "ENROLMENT", "DETAIL")
    # Every cell but the stage comes from the network (a phone's Event header, a service's error)
    rows = [tuple(printable(v) for v in (d.mac, d.vendor or "-", d.model or "-", d.firmware or "-",
                                         d.ip or "-", d.stage, d.enrolment_detail or "-", d.detail))
            for d in devices]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols[:-1], widths)) + "  " + cols[-1]]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines)


def summary(devices: list[Device]) -> str:
    counts: dict[str, int] = {}
    enrolment: dict[str, int] = {}
    for d in devices:
        counts[d.stage] = counts.get(d.stage, 0) + 1
        if d.enrolment:
            enrolment[d.enrolment] = enrolment.get(d.enrolment, 0) + 1
    parts = [f"{counts[st]} {st}" for st in STAGES if st in counts]
    states = [f"{enrolment[st]} {st}" for st in ENROLMENT_STATES if st in enrolment]
    return (f"{len(devices)} device(s)" + (": " + ", ".join(parts) if parts else "")
            + ("; enrolment: " + ", ".join(states) if states else ""))


# --- reading the broker ------------------------------------------------------------------------


def read_retained(url: s.MqttUrl, prefix: str, quiet: float = 0.5, limit: float = 15.0,
                  reactor: Any = None) -> Any:
    """Deferred firing with {mac: {kind: parsed payload}} of every retained device message.

    MQTT has no "end of retained messages", so the read ends once the broker has been quiet for
    ``quiet`` seconds after acknowledging the subscription (or after ``limit``).
    """
    from twisted.internet import defer, task

    from services.mqtt import Incoming
    from tools.mqttclient import Session

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    topics = Topics(prefix)
    found: dict[str, dict[str, Any]] = {}
    last = [reactor.seconds()]

    def on_message(msg: Incoming) -> None:
        last[0] = reactor.seconds()
        info = topics.parse(msg.topic)
        if not msg.retain or not is_device_topic(info):
            return
        if msg.empty:
            return
        found.setdefault(info.mac, {})[info.kind] = msg.data if msg.error is None else {"_error": msg.error}

    @defer.inlineCallbacks
    def go() -> Any:
        session = Session(url, "devices", reactor)
        yield session.open(limit, lambda bus: bus.subscribe(topics.devices("+"), on_message))
        try:
            last[0] = reactor.seconds()
            end = reactor.seconds() + limit
            while reactor.seconds() - last[0] < quiet and reactor.seconds() < end:
                yield task.deferLater(reactor, 0.05, lambda: None)
            return found
        finally:
            session.close()

    return go()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default=None, metavar="LIST",
                        help=f"only devices at these stages, comma-separated: {', '.join(STAGES)}")
    parser.add_argument("--errors", action="store_true", help="only devices in error (= --stage error)")
    parser.add_argument("--vendor", default=None, help="only this vendor (grandstream, yealink, ...)")
    parser.add_argument("--enrolment", default=None, metavar="LIST",
                        help=f"only devices in these enrolment states, comma-separated: {', '.join(ENROLMENT_STATES)}")
    parser.add_argument("--mac", default=None, help="only MACs containing this")
    parser.add_argument("--json", action="store_true", help="a JSON array of devices")
    parser.add_argument("--quiet-time", type=float, default=0.5, metavar="SECONDS",
                        help="how long the broker must be quiet before the list is complete [default: 0.5]")
    s.add_arguments(parser, SETTINGS)


def run(args: argparse.Namespace) -> int:
    settings = s.resolve(SETTINGS, args)
    stages = {x.strip() for x in (args.stage or "").split(",") if x.strip()}
    if args.errors:
        stages.add("error")
    unknown = stages - set(STAGES)
    if unknown:
        print(f"pnp devices: --stage: {', '.join(sorted(unknown))!r} is not allowed: "
              f"{', '.join(STAGES)}", file=sys.stderr)
        return 2
    enrolment = {x.strip() for x in (args.enrolment or "").split(",") if x.strip()}
    if enrolment - set(ENROLMENT_STATES):
        print(f"pnp devices: --enrolment: {', '.join(sorted(enrolment - set(ENROLMENT_STATES)))!r} is not "
              f"allowed: {', '.join(ENROLMENT_STATES)}", file=sys.stderr)
        return 2
    from tools import mqttclient

    try:
        retained = mqttclient.run(lambda reactor: read_retained(settings.mqtt_url, settings.topic_prefix,
                                                     quiet=args.quiet_time, reactor=reactor))
    except mqttclient.BrokerProblem as exc:
        print(f"pnp devices: {exc}", file=sys.stderr)
        return 1
    devices = select(fold_all(retained), stages or None, args.vendor, args.mac, enrolment or None)
    if args.json:
        print(json.dumps([asdict(d) for d in devices], indent=2))
    else:
        print(table(devices))
        print(summary(devices), file=sys.stderr)
    return 0


__all__ = ["Device", "fold", "fold_all", "select", "table", "read_retained", "STAGES", "ENROLMENT_STATES",
           "is_mac"]
