"""The operators' commands to the generator: re-arm a device's enrolment, rotate its credential.

``pnp assign --rearm MAC`` and ``--rotate MAC`` and the console's buttons publish the same
retained message, ``{"id", "at", "v"}`` on ``devices/{mac}/rearm`` or ``devices/{mac}/rotate``
(docs/MQTT.md). The generator acts once per id, so a new id is drawn for every command; a replay
of the retained message does nothing.

What a command led to is read from topics a PBX login may read (the deployment ACL keeps
``config`` from it): a re-arm succeeded when a new ``enrolment`` epoch arrives in state
``enrolling``; a rotation when ``files`` carries a new revision. :class:`Outcomes` decides that
from the messages alone (sans-I/O); :func:`send` is the broker side.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.messages import Command, encode_flat, now_iso
from services.topics import COMMAND_KINDS, Topics

if TYPE_CHECKING:  # the reactor's side is imported when used: `pnp devices --help` needs none of it
    from services import settings as s
    from services.mqtt import Bus, Incoming

# What each command is called in what a user reads.
NAMES = {"rearm": "re-arm", "rotate": "rotate"}
# The topics that answer a command, by command: (kind, what a retained one gives: the baseline).
ANSWERS = {"rearm": ("enrolment", "error"), "rotate": ("files", "error")}


@dataclass(frozen=True)
class Order:
    """One command for one device."""

    mac: str
    kind: str  # one of COMMAND_KINDS
    id: str

    @classmethod
    def new(cls, mac: str, kind: str) -> "Order":
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command {kind!r}")
        return cls(mac, kind, uuid.uuid4().hex)


def message(topics: Topics, order: Order, at: str | None = None) -> tuple[str, bytes]:
    """The retained message that gives ``order``: its topic and payload."""
    return topics.device(order.mac, order.kind), encode_flat(Command(id=order.id, at=at or now_iso()))


def enrolment_words(data: Any) -> tuple[str, str]:
    """(state, words) for an ``enrolment`` payload, for people: ``enrolling until …``,
    ``provisioned``, ``conflict 10.0.0.5 10.0.0.9``, ``expired …``. Any input is tolerated."""
    if not isinstance(data, dict):
        return "", ""
    state = _text(data.get("state")) or "?"
    epoch = data.get("epoch")
    bound = _text(data.get("bound"))
    candidate = _text(data.get("candidate"))
    if state == "enrolling":
        words = f"enrolling until {when(data.get('until'))}"
        if bound:
            words += f", bound to {bound}"
        elif candidate:
            words += f", first seen at {candidate}"
    elif state == "provisioned":
        words = "provisioned" + (f" at {bound}" if bound else "")
    elif state == "conflict":
        found = data.get("addresses")
        addresses = [a for a in (_text(x) for x in found) if a] if isinstance(found, list) else []
        # two by design; a payload with more is not allowed to fill the screen
        words = "conflict " + (" and ".join(addresses[:2]) or "(addresses unknown)")
        if len(addresses) > 2:
            words += f" (+{len(addresses) - 2} more)"
    elif state == "expired":
        words = f"expired {when(data.get('until'))}: not provisioned in time"
    else:
        words = state
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        words += f" (epoch {epoch})"
    return state, words


def when(value: Any) -> str:
    """A time as the payload gives it (ISO 8601 UTC), to the minute: what an operator needs of
    a window of days. Seconds since the epoch are accepted too."""
    from datetime import datetime, timezone

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = datetime.fromtimestamp(value, timezone.utc).isoformat()
        except (OverflowError, OSError, ValueError):
            return str(value)
    if not isinstance(value, str) or not value:
        return "?"
    if len(value) >= 16 and value[10:11] == "T":
        return value[:16] + "Z"
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Outcomes:
    """What each order led to, from the messages of its device's answering topics.

    Retained messages are the state before the command: they set the baseline (the current
    epoch, the current revision). Live ones after it are the answer. An error from the generator
    (the command's executor) is an answer too."""

    def __init__(self, orders: list[Order]) -> None:
        self.orders = {o.mac: o for o in orders}
        self.epoch: dict[str, int] = {}
        self.revision: dict[str, int] = {}
        self.assigned: set[str] = set()  # MACs with a retained assignment
        self.done: dict[str, tuple[bool, str]] = {}

    def watched(self, topics: Topics) -> dict[str, tuple[str, str]]:
        """{topic: (mac, kind)} of what to subscribe to."""
        out = {}
        for mac, order in self.orders.items():
            for kind in (*ANSWERS[order.kind], "assignment"):
                out[topics.device(mac, kind)] = (mac, kind)
        return out

    def seen(self, mac: str, kind: str, data: Any, retained: bool) -> None:
        order = self.orders.get(mac)
        if order is None or mac in self.done:
            return
        if kind == "assignment":
            if data is not None:
                self.assigned.add(mac)
            return
        payload = data if isinstance(data, dict) else {}
        if retained:
            if kind == "enrolment" and (epoch := _int(payload.get("epoch"))) is not None:
                self.epoch[mac] = epoch
            elif kind == "files" and (revision := _int(payload.get("revision"))) is not None:
                self.revision[mac] = revision
            return
        if kind == "error":
            if payload and payload.get("service") == "generator":
                self.done[mac] = (False, f"error {_text(payload.get('code')) or '?'}: "
                                         f"{_text(payload.get('message')) or '(no message)'}")
            return
        if order.kind == "rearm" and kind == "enrolment":
            epoch = _int(payload.get("epoch"))
            if epoch is None or epoch <= self.epoch.get(mac, 0):
                return
            state, words = enrolment_words(payload)
            self.done[mac] = (state == "enrolling", ("re-armed: " if state == "enrolling" else "") + words)
        elif order.kind == "rotate" and kind == "files":
            if data is None:
                self.done[mac] = (False, "files withdrawn (unassigned?)")
                return
            revision = _int(payload.get("revision"))
            if revision is None or revision <= self.revision.get(mac, 0):
                return
            found = payload.get("files")
            names = ", ".join(_text(f.get("name")) or "?" for f in found if isinstance(f, dict)) \
                if isinstance(found, list) else ""
            self.done[mac] = (True, f"new credential in revision {revision}" + (f" ({names})" if names else ""))

    def missing(self, mac: str, wait: float) -> str:
        """Why nothing came for ``mac`` within ``wait`` seconds, as far as one can tell."""
        order = self.orders[mac]
        if mac not in self.assigned:
            why = "no assignment is retained for it: the generator acts once it has one"
        elif order.kind == "rearm":
            why = "is the generator running? is the fileserver one that publishes enrolment?"
        else:
            why = ("is the generator running? a file holding no credential of ours (an assignment's own "
                   "provisioning.config_server) gets no new revision")
        return f"no outcome within {wait:g} s ({why})"


def send(url: "s.MqttUrl", prefix: str, orders: list[Order], reactor: Any, timeout: float = 10.0,
         wait: float = 0.0) -> Any:
    """Publish the orders retained, QoS 1; fires with the :class:`Outcomes`, waiting up to
    ``wait`` seconds for every answer. Fails with BrokerProblem as tools.assign.publish does."""
    from twisted.internet import defer

    return defer.ensureDeferred(_send(url, prefix, orders, reactor, timeout, wait))


async def _send(url: "s.MqttUrl", prefix: str, orders: list[Order], reactor: Any, timeout: float,
                wait: float) -> "Outcomes":
    from twisted.internet import task

    from tools.mqttclient import BrokerProblem, Session

    topics = Topics(prefix)
    outcomes = Outcomes(orders)
    watched = outcomes.watched(topics)

    def on_answer(msg: "Incoming") -> None:
        if msg.topic in watched:
            mac, kind = watched[msg.topic]
            data = None if msg.empty else msg.data if msg.error is None else {"_error": msg.error}
            outcomes.seen(mac, kind, data, msg.retain)

    def subscribe(bus: "Bus") -> None:
        if wait > 0:
            for topic in sorted(watched):
                bus.subscribe(topic, on_answer)

    session = Session(url, "assign", reactor)
    try:
        bus = await session.open(timeout, subscribe)
    except BrokerProblem as exc:
        raise BrokerProblem(f"{exc}; nothing was published") from None
    try:
        at = now_iso()
        for order in orders:
            if not bus.publish(*message(topics, order, at), retain=True):
                raise BrokerProblem(f"too many commands at once for the send queue ({len(orders)})")
        acknowledged = await bus.flush(timeout)
        if not acknowledged:
            raise BrokerProblem(f"the broker {url} did not acknowledge within {timeout:.0f} s; "
                                "what it did not acknowledge may not be published")
        refused = bus.counters["mqtt_publish_refused"]
        if refused:
            kinds = " and ".join(sorted({NAMES[o.kind] for o in orders}))
            raise BrokerProblem(f"the broker {url} refused {refused} of {len(orders)} command(s) "
                                f"(is this login allowed to publish {kinds}?)")
        deadline = reactor.seconds() + wait
        while len(outcomes.done) < len(orders) and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.02, lambda: None)
        return outcomes
    finally:
        session.close()
