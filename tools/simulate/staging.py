"""``--assign``: pre-stage every simulated phone on the broker before it boots.

An assignment with ``vendor`` and ``model`` is published retained for each phone, then we wait
(bounded) until the fileserver has published each phone's files, so that the boot storm measures
the PBX answering phones, not the PBX rendering configs.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Iterable

from twisted.internet import defer, task

from services.mqtt import Bus, Incoming
from services.settings import MqttUrl
from services.topics import Topics
from tools.simulate.vendors import Identity


def event_model(ident: Identity) -> str:
    """The model as the phone's SUBSCRIBE names it (what the listener reports)."""
    return f"snom{ident.model}" if ident.vendor.name == "snom" else ident.model


def assignment(ident: Identity, index: int, sip_server: str = "pbx.example.com",
               first_user: int = 1001) -> dict[str, Any]:
    """A pre-staged assignment for a simulated phone: one account, a stable password."""
    user = str(first_user + index)
    # Derived, not random: re-running the same command renders the same bytes (no reflash).
    password = hashlib.sha256(f"pnp-simulate:{ident.mac}".encode()).hexdigest()[:16]
    return {
        "vendor": ident.vendor.name,
        "model": ident.model,
        "accounts": [{"sip_server": sip_server, "user_id": user, "password": password,
                      "display_name": f"Sim {ident.vendor.name} {user}"}],
    }


class StagingError(Exception):
    pass


@defer.inlineCallbacks
def stage(identities: Iterable[Identity], url: MqttUrl, prefix: str = "pnp", *,
          sip_server: str = "pbx.example.com", first_user: int = 1001, wait_published: float = 60.0,
          reactor: Any = None, on_progress: Callable[[int, int], None] | None = None,
          connect_timeout: float = 10.0) -> Any:
    """Publish the assignments; fires with the number of phones whose files got published
    within ``wait_published`` seconds (0 = do not wait). Raises StagingError when the broker
    cannot be reached."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    idents = list(identities)
    topics = Topics(prefix)
    bus = Bus(url, f"pnp-simulate-{int(time.time() * 1000) % 10**9}", reactor, backoff_max=1.0)
    wanted = {i.mac for i in idents}
    published: set[str] = set()

    def on_published(msg: Incoming) -> None:
        info = topics.parse(msg.topic)
        if info and info.mac in wanted and isinstance(msg.data, dict) and "files" in msg.data:
            published.add(info.mac)

    if wait_published > 0:
        bus.subscribe(topics.devices("files"), on_published)  # files: readable by the pbx login too
    bus.start()
    try:
        connected = bus.when_connected()
        connected.addTimeout(connect_timeout, reactor)
        try:
            yield connected
        except defer.TimeoutError:
            raise StagingError(f"broker {url} not reachable within {connect_timeout:g}s") from None
        yield bus.when_subscribed()
        for index, ident in enumerate(idents):
            bus.publish_json(topics.device(ident.mac, "assignment"),
                             assignment(ident, index, sip_server, first_user), retain=True)
            if index % 500 == 499:  # let paho drain between bursts
                yield task.deferLater(reactor, 0, lambda: None)
        flushed = yield bus.flush(timeout=30)
        if not flushed:
            raise StagingError(f"broker {url} did not acknowledge every assignment within 30s")
        if wait_published > 0:
            deadline = reactor.seconds() + wait_published
            while len(published) < len(wanted) and reactor.seconds() < deadline:
                if on_progress is not None:
                    on_progress(len(published), len(wanted))
                yield task.deferLater(reactor, 0.1, lambda: None)
            if on_progress is not None:
                on_progress(len(published), len(wanted))
        return len(published)
    finally:
        bus.stop()
