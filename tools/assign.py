"""Publish assignments: one phone from flags, many from a CSV or JSON file, or --unassign.

Every assignment is checked against the schema before anything is published; the summary says
what was published and what was refused and why. Examples:

  pnp assign --mac 000b82f55284 --sip-server pbx.example.com --user-id 1001 --password s3cret \\
             --display-name Alice
  pnp assign --mac 00:0B:82:F5:52:84 --json '{"accounts": [...], "profile": "office"}'
  pnp assign --file phones.csv          # columns: mac, sip_server, user_id, password, ...
  pnp assign --file phones.json         # {"000b82f55284": {...}, ...} or [{"mac": ..., ...}]
  pnp assign --mac 000b82f55284 --unassign
  pnp assign --mac 000b82f55284 --json '{...}' --wait 5   # show the generator's answer
  pnp assign --rearm 000b82f55284 --wait 10   # enrol it again: new credential, new epoch
  pnp assign --rotate 000b82f55284 --wait 10  # new credential, the old one kept until fetched

CSV columns: mac, profile, vendor, model, codecs (space, comma or ';' separated), time_zone,
ntp_server, admin_password, unassign (yes/no); account 1 as sip_server, port, transport, user_id,
auth_id, password, display_name, label, outbound_proxy, enabled; account N as accountN_<field>;
key N as keyN_type, keyN_value, keyN_label, keyN_account.

--rearm MAC (after a conflict, an expired window, a phone replaced or reset) makes the generator
give the device a new HTTP credential at once (the old one stops working) and the fileserver
open a new enrolment epoch that forgets the addresses of the last one: the next phone to boot
with that MAC is provisioned. --rotate MAC gives it a new credential and keeps the old one
accepted until the phone has fetched its new file. Both can be repeated for several MACs; with
--wait they show the outcome (rearm: the new epoch enrolling; rotate: the new revision).

Exit status: 0 all published (and, for --rearm/--rotate with --wait, all done), 1 some refused,
an error answered or the broker unreachable, 2 a bad setting, 3 --rearm/--rotate published but
no outcome within --wait.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from services import settings as s
from services.mqtt import Bus, Incoming
from services.topics import Topics
from tools import mqttclient
from tools.mqttclient import BrokerProblem, Session

ACCOUNT_FIELDS = ("sip_server", "port", "transport", "user_id", "auth_id", "password", "display_name",
                  "label", "outbound_proxy", "enabled")
TOP_FIELDS = ("profile", "vendor", "model", "time_zone", "ntp_server", "admin_password")
KEY_FIELDS = ("type", "value", "label", "account")
INT_FIELDS = {"port", "account"}
BOOL_FIELDS = {"enabled"}
_ACCOUNT_COLUMN = re.compile(r"^account([0-9]{1,2})_([a-z_]+)$")
_KEY_COLUMN = re.compile(r"^key([0-9]{1,3})_([a-z_]+)$")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


class Refused(ValueError):
    pass


@dataclass
class Item:
    source: str  # "flags", "line 3", "entry 2"
    mac: str
    payload: dict | None  # None: unassign


def configure(parser: argparse.ArgumentParser) -> None:
    s.add_arguments(parser, [s.MQTT_URL, s.TOPIC_PREFIX])
    parser.add_argument("--mac", help="the phone's MAC (any common spelling)")
    parser.add_argument("--unassign", action="store_true", help="clear the phone's assignment")
    parser.add_argument("--file", help="a CSV or JSON file of assignments (by extension; '-' reads JSON from stdin)")
    parser.add_argument("--json", dest="json_text", metavar="JSON", help="the whole assignment as JSON, for --mac")
    parser.add_argument("--dry-run", action="store_true", help="check and show, publish nothing")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to SECONDS for the answer (config, files or error; for --rearm the new "
                             "enrolment epoch, for --rotate the new revision) and show it")
    parser.add_argument("--rearm", action="append", default=[], metavar="MAC",
                        help="re-arm the phone's enrolment: new credential at once, new epoch (repeatable)")
    parser.add_argument("--rotate", action="append", default=[], metavar="MAC",
                        help="rotate the phone's HTTP credential; the old one works until it fetched (repeatable)")
    for name in ACCOUNT_FIELDS + TOP_FIELDS:
        parser.add_argument("--" + name.replace("_", "-"), dest=f"a_{name}", metavar="VALUE",
                            help=f"account 1's {name}" if name in ACCOUNT_FIELDS else name)
    parser.add_argument("--codecs", dest="a_codecs", metavar="LIST", help="e.g. g722,pcmu,pcma")


def normalize_mac(text: str) -> str:
    from generator.engine import spelled_mac

    mac = spelled_mac(text.strip())
    if mac is None:
        raise Refused(f"{text!r} is not a MAC address")
    return mac


def _scalar(name: str, value: str) -> Any:
    if name in INT_FIELDS:
        if not re.fullmatch(r"[0-9]{1,6}", value):
            raise Refused(f"{name} {value!r} is not a whole number")
        return int(value)
    if name in BOOL_FIELDS:
        if value.lower() not in _TRUE | _FALSE:
            raise Refused(f"{name} {value!r} is not yes or no")
        return value.lower() in _TRUE
    return value


def _codecs(text: str) -> list[str]:
    return [c.lower() for c in re.split(r"[\s,;|]+", text.strip()) if c]


def from_fields(fields: dict[str, str]) -> dict:
    """An assignment from flat names (CSV columns or flags); empty values are left out."""
    doc: dict[str, Any] = {}
    accounts: dict[int, dict] = {}
    keys: dict[int, dict] = {}
    for name, raw in fields.items():
        value = (raw or "").strip()
        if not value:
            continue
        if name in TOP_FIELDS:
            doc[name] = value
        elif name == "codecs":
            doc["codecs"] = _codecs(value)
        elif name in ACCOUNT_FIELDS:
            accounts.setdefault(1, {})[name] = _scalar(name, value)
        elif m := _ACCOUNT_COLUMN.match(name):
            accounts.setdefault(int(m.group(1)), {})[m.group(2)] = _scalar(m.group(2), value)
        elif m := _KEY_COLUMN.match(name):
            keys.setdefault(int(m.group(1)), {})[m.group(2)] = _scalar(m.group(2), value)
    if accounts:
        if sorted(accounts) != list(range(1, len(accounts) + 1)):
            raise Refused(f"accounts must be numbered 1, 2, ... without gaps (got {sorted(accounts)})")
        doc["accounts"] = [accounts[n] for n in sorted(accounts)]
    if keys:
        last = max(keys)
        doc["keys"] = [keys.get(n, {"type": "none"}) for n in range(1, last + 1)]
    return doc


def _known_column(name: str) -> bool:
    if name in ("mac", "codecs", "unassign") or name in TOP_FIELDS or name in ACCOUNT_FIELDS:
        return True
    m = _ACCOUNT_COLUMN.match(name)
    if m:
        return m.group(2) in ACCOUNT_FIELDS
    m = _KEY_COLUMN.match(name)
    return m is not None and m.group(2) in KEY_FIELDS


def read_csv(text: str) -> tuple[list[Item], list[tuple[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if "mac" not in header:
        raise Refused("the CSV has no 'mac' column")
    unknown = [h for h in header if not _known_column(h)]
    if unknown:
        raise Refused(f"the CSV has unknown columns: {', '.join(unknown)}")
    items, refused = [], []
    for number, row in enumerate(reader, start=2):
        source = f"line {number}"
        fields = {(k or "").strip().lower(): v for k, v in row.items() if k is not None}
        try:
            mac = normalize_mac(fields.pop("mac", "") or "")
            unassign = (fields.pop("unassign", "") or "").strip().lower() in _TRUE
            items.append(Item(source, mac, None if unassign else from_fields(fields)))
        except Refused as exc:
            refused.append((source, str(exc)))
    return items, refused


def read_json(text: str) -> tuple[list[Item], list[tuple[str, str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(f"the file is not JSON: {exc.msg} at line {exc.lineno}") from None
    entries: list[tuple[str, Any, Any]] = []
    if isinstance(data, dict):
        entries = [(f"entry {k!r}", k, v) for k, v in data.items()]
    elif isinstance(data, list):
        for i, entry in enumerate(data, start=1):
            if not isinstance(entry, dict) or "mac" not in entry:
                entries.append((f"entry {i}", None, None))
                continue
            rest = {k: v for k, v in entry.items() if k != "mac"}
            payload = rest.get("assignment", rest) if set(rest) <= {"assignment"} and rest else rest
            if rest.get("unassign") is True:
                payload = None
            entries.append((f"entry {i}", entry["mac"], payload))
    else:
        raise Refused("the file must hold an object {mac: assignment} or a list of objects with a 'mac'")
    items, refused = [], []
    for source, mac, payload in entries:
        try:
            if not isinstance(mac, str):
                raise Refused("an entry needs a 'mac'")
            if payload is not None and not isinstance(payload, dict):
                raise Refused("the assignment must be a JSON object (or null to unassign)")
            items.append(Item(source, normalize_mac(mac), payload))
        except Refused as exc:
            refused.append((source, str(exc)))
    return items, refused


def check(item: Item) -> tuple[str | None, list[str]]:
    """(reason to refuse, warnings) for one assignment."""
    from generator import schema
    from generator.merge import strip_nulls

    if item.payload is None:
        return None, []
    found = schema.first_problem(strip_nulls(item.payload), partial=True)
    if found is not None:
        return found.message, []
    missing = [p.message for p in schema.problems(item.payload) if "is missing" in p.message]
    return None, [f"{m} (fine if a profile supplies it)" for m in missing]


def collect(args: argparse.Namespace) -> tuple[list[Item], list[tuple[str, str]]]:
    flags = {k[2:]: v for k, v in vars(args).items() if k.startswith("a_") and v is not None}
    if args.file:
        if args.mac or flags or args.json_text or args.unassign:
            raise Refused("--file cannot be combined with --mac, --json, --unassign or assignment flags")
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8-sig")
        return read_csv(text) if args.file.lower().endswith(".csv") else read_json(text)
    if not args.mac:
        raise Refused("give --mac (with assignment flags, --json or --unassign), --file, "
                      "--rearm MAC or --rotate MAC")
    mac = normalize_mac(args.mac)
    if args.unassign:
        if flags or args.json_text:
            raise Refused("--unassign takes no assignment")
        return [Item("flags", mac, None)], []
    if args.json_text:
        if flags:
            raise Refused("--json cannot be combined with assignment flags")
        try:
            payload = json.loads(args.json_text)
        except json.JSONDecodeError as exc:
            raise Refused(f"--json is not JSON: {exc.msg}") from None
        if not isinstance(payload, dict):
            raise Refused("--json must be a JSON object")
        return [Item("--json", mac, payload)], []
    if not flags:
        raise Refused("nothing to assign: give assignment flags (--sip-server, --user-id ...), --json or --unassign")
    return [Item("flags", mac, from_fields(flags))], []


def message(topics: Any, item: Item) -> tuple[str, bytes]:
    """The retained message that publishes ``item``: its topic and payload (empty: unassign)."""
    from services.messages import encode_json

    return topics.device(item.mac, "assignment"), b"" if item.payload is None else encode_json(item.payload)


def vet(items: list[Item], refused: list[tuple[str, str]]) -> tuple[list[Item], list[str]]:
    """The items fit to publish (a MAC's first one only, each passing :func:`check`) and the
    warnings; the rest is added to ``refused`` with the reason."""
    ok: list[Item] = []
    warned: list[str] = []
    seen: dict[str, str] = {}
    for item in items:
        if item.mac in seen:
            refused.append((item.source, f"{item.mac} appears again (first in {seen[item.mac]})"))
            continue
        seen[item.mac] = item.source
        reason, warnings = check(item)
        if reason is not None:
            refused.append((f"{item.source} ({item.mac})", reason))
            continue
        warned += [f"{item.source} ({item.mac}): {warning}" for warning in warnings]
        ok.append(item)
    return ok, warned


@defer.inlineCallbacks
def publish(url: s.MqttUrl, prefix: str, items: list[Item], reactor: Any, timeout: float = 10.0,
            wait: float = 0.0) -> Any:
    """Publish retained, QoS 1; fires with what the generator answered per MAC (with ``wait``).
    Fails with BrokerProblem when the broker cannot be reached, does not acknowledge every
    message within ``timeout`` or refuses any (its ACL)."""
    topics = Topics(prefix)
    answers: dict[str, str] = {}
    watched = {topics.device(item.mac, kind): (item.mac, kind) for item in items
               for kind in ("config", "files", "error")}

    def on_answer(msg: Incoming) -> None:
        # Retained messages are the state before this publish; only live ones answer it.
        if msg.retain or msg.topic not in watched:
            return
        mac, kind = watched[msg.topic]
        answers[mac] = _answer(kind, msg.raw)

    def subscribe(bus: Bus) -> None:
        if wait > 0:
            for topic in sorted(watched):
                bus.subscribe(topic, on_answer)

    session = Session(url, "assign", reactor)
    try:
        bus = yield session.open(timeout, subscribe)
    except BrokerProblem as exc:
        raise BrokerProblem(f"{exc}; nothing was published") from None
    try:
        for item in items:
            if not bus.publish(*message(topics, item), retain=True):
                raise BrokerProblem(f"too many assignments at once for the send queue ({len(items)})")
        acknowledged = yield bus.flush(timeout)
        if not acknowledged:
            raise BrokerProblem(f"the broker {url} did not acknowledge within {timeout:.0f} s; "
                                "what it did not acknowledge may not be published")
        refused = bus.counters["mqtt_publish_refused"]
        if refused:
            raise BrokerProblem(f"the broker {url} refused {refused} of {len(items)} assignment(s) "
                                f"(is this login allowed to publish assignments?)")
        deadline = reactor.seconds() + wait
        while len(answers) < len(items) and reactor.seconds() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        return dict(answers)
    finally:
        session.close()


def _answer(kind: str, payload: bytes) -> str:
    try:
        data = json.loads(payload) if payload else None
    except ValueError:
        data = None
    if kind == "config":
        if data is None:
            return "config withdrawn"
        names = ", ".join(f.get("name", "?") for f in data.get("files", []) if isinstance(f, dict))
        return f"config revision {data.get('revision')} ({names})"
    if kind == "files":
        # What a PBX login sees: under the deployment's ACL it may read neither config nor
        # published (the working URLs); files says the same revision without them.
        if data is None:
            return "files withdrawn"
        names = ", ".join(str(f.get("name", "?")) for f in data.get("files", []) if isinstance(f, dict))
        return f"published revision {data.get('revision')} ({names})"
    if data is None:
        return "error cleared"
    return f"error {data.get('code')}: {data.get('message')}"


def orders_from(args: argparse.Namespace) -> list[Any]:
    """The --rearm/--rotate orders, one per MAC; Refused when mixed with anything else."""
    from tools.commands import Order

    flags = [k for k, v in vars(args).items() if k.startswith("a_") and v is not None]
    if args.mac or args.file or args.json_text or args.unassign or flags:
        raise Refused("--rearm and --rotate take a MAC each and no assignment: "
                      "give them without --mac, --file, --json, --unassign or assignment flags")
    orders: dict[str, Any] = {}
    for kind, macs in (("rearm", args.rearm), ("rotate", args.rotate)):
        for text in macs:
            mac = normalize_mac(text)
            if mac in orders:
                same = orders[mac].kind == kind
                raise Refused(f"{mac} is given twice" if same else
                              f"{mac}: --rearm already rotates the credential; give it once")
            orders[mac] = Order.new(mac, kind)
    return list(orders.values())


def run_orders(args: argparse.Namespace, settings: Any) -> int:
    from tools.commands import NAMES, send

    try:
        orders = orders_from(args)
    except Refused as exc:
        print(f"pnp assign: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        for order in orders:
            print(f"would publish {NAMES[order.kind]} {order.mac}")
        print(f"{len(orders)} would publish, 0 refused")
        return 0
    try:
        outcomes = mqttclient.run(lambda reactor: send(settings.mqtt_url, settings.topic_prefix, orders,
                                                       reactor, wait=args.wait))
    except BrokerProblem as exc:
        print(f"pnp assign: {exc}", file=sys.stderr)
        return 1
    failed = late = 0
    for order in orders:
        line = f"published {NAMES[order.kind]} {order.mac} (id {order.id})"
        if args.wait:
            if order.mac in outcomes.done:
                ok, words = outcomes.done[order.mac]
                failed += not ok
                line += ": " + words
            else:
                late += 1
                line += ": " + outcomes.missing(order.mac, args.wait)
        print(line)
    print(f"{len(orders)} published, 0 refused"
          + (f"; {len(orders) - failed - late} done, {failed} failed, {late} without outcome" if args.wait else ""))
    return 1 if failed else 3 if late else 0


def run(args: argparse.Namespace) -> int:
    settings = s.resolve([s.MQTT_URL, s.TOPIC_PREFIX], args)
    out = sys.stdout
    if args.rearm or args.rotate:
        return run_orders(args, settings)
    try:
        items, refused = collect(args)
    except (Refused, OSError) as exc:
        print(f"pnp assign: {exc}", file=sys.stderr)
        return 1
    ok, warnings = vet(items, refused)
    for warning in warnings:
        print(f"warning: {warning}", file=out)
    answers: dict[str, str] = {}
    if ok and not args.dry_run:
        try:
            answers = mqttclient.run(lambda reactor: publish(settings.mqtt_url, settings.topic_prefix, ok,
                                                  reactor, wait=args.wait))
        except BrokerProblem as exc:
            print(f"pnp assign: {exc}", file=sys.stderr)
            return 1
    verb = "would publish" if args.dry_run else "published"
    for item in ok:
        what = "unassign" if item.payload is None else "assignment"
        line = f"{verb} {what} {item.mac} ({item.source})"
        if args.wait and not args.dry_run:
            line += ": " + answers.get(item.mac, f"no answer within {args.wait:g} s (bytes unchanged, "
                                       "or waiting for the phone's discovery)")
        print(line, file=out)
    for source, reason in refused:
        print(f"refused {source}: {reason}", file=out)
    print(f"{len(ok)} {verb}, {len(refused)} refused", file=out)
    return 1 if refused else 0
