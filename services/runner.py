"""The life of a service: connect, report status, run, stop cleanly.

A service is a package whose ``main`` module has ``SETTINGS`` (from its ``settings`` module),
``check_settings(settings)`` (raises :class:`~services.settings.SettingError` before anything
starts) and ``start(ctx) -> Component``: it only wires, building the sans-I/O core and the glue
around it and calling the glue's ``start()``. A glue's constructor only stores what it is given;
subscribing, opening sockets and starting timers happen in its ``start()``.
"""

from __future__ import annotations

import gc
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from twisted.internet import defer, task
from twisted.logger import Logger

from services import __version__
from services.mqtt import Bus
from services.health import Health
from services.log import start_logging
from services.messages import ErrorReport, ServiceStatus, now_iso
from services.settings import Settings
from services.store import private_dir
from services.topics import Topics

log = Logger(namespace="runner")

STOP_TIMEOUT = 4.0
# A broker away for a reconnect or two is normal (a restart, a network blip); longer, and the
# service says it is degraded.
MQTT_GRACE = 10.0


@dataclass
class Context:
    """What a service gets from the runner."""

    name: str
    settings: Settings
    bus: Bus
    topics: Topics
    reactor: Any
    started_at: str
    counters: Counter = field(default_factory=Counter)
    health: Health = field(default_factory=Health)

    def database_path(self) -> Path:
        """Where this service keeps its sqlite database (its directory is created, owner-only)."""
        return private_dir(Path(self.settings.data_dir)) / f"{self.name}.db"

    def publish_error(self, mac: str, code: str, message: str, field: str | None = None) -> None:
        """Retained ``devices/{mac}/error`` naming this service, for operators."""
        report = ErrorReport(service=self.name, code=code, message=message, at=now_iso(), field=field)
        self.bus.publish(self.topics.device(mac, "error"), report.to_json(), retain=True)

    def clear_error(self, mac: str) -> None:
        self.bus.publish(self.topics.device(mac, "error"), b"", retain=True)


@runtime_checkable
class Component(Protocol):
    """What every service's glue is to the runner."""

    def start(self) -> Any:
        """Subscribe, open sockets, start timers (the constructor did none of it)."""

    def stop(self) -> Any:
        """Release all of it; may return a Deferred."""

    def counters(self) -> dict[str, int]:
        """Numbers for the service's status topic, besides the runner's own."""


Start = Callable[[Context], Component]


class Runtime:
    """One running service, usable inside a test reactor as well as from :func:`run`."""

    def __init__(self, name: str, settings: Settings, start: Start, reactor: Any = None,
                 mqtt_grace: float = MQTT_GRACE) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.name = name
        self.settings = settings
        self.reactor = reactor
        self._start = start
        self.topics = Topics(settings.topic_prefix)
        self.started_at = now_iso()
        self.status_topic = self.topics.service(name, settings.instance)
        self.bus = Bus(settings.mqtt_url, f"pnp-{name}-{settings.instance}-{os.getpid()}", reactor)
        self.ctx = Context(name, settings, self.bus, self.topics, reactor, self.started_at)
        self.component: Component | None = None
        self._status_loop = task.LoopingCall(self.publish_status)
        self._status_loop.clock = reactor
        self._stopped = False
        self.mqtt_grace = mqtt_grace
        self._broker_timer: Any = None

    def status(self, state: str = "online") -> ServiceStatus:
        counters = dict(self.ctx.counters)
        counters.update(self.bus.counters)
        if self.component is not None:
            counters.update(self.component.counters())
        health = self.ctx.health
        counters.update(health.counters)
        return ServiceStatus(
            state=state, version=__version__, started_at=self.started_at, service=self.name,
            instance=self.settings.instance, counters=counters, at=now_iso(),
            health=health.status, reasons=dict(health.faults), notices=dict(health.notices),
        )

    def publish_status(self, state: str = "online") -> None:
        self.bus.publish(self.status_topic, self.status(state).to_json(), retain=True)

    def _health_changed(self) -> None:
        # At once, not at the next interval; while the broker is away the next connect says it.
        if self.bus.connected and not self._stopped:
            self.publish_status()

    def _broker_back(self) -> None:
        self._cancel_broker_timer()
        if "mqtt" in self.ctx.health.faults:
            self.ctx.health.clear("mqtt")  # which publishes the status
        else:
            # Online again after every reconnect: the broker may have published our will meanwhile.
            self.publish_status()

    def _broker_gone(self) -> None:
        if not self._stopped and (self._broker_timer is None or not self._broker_timer.active()):
            self._broker_timer = self.reactor.callLater(self.mqtt_grace, self._broker_late)

    def _broker_late(self) -> None:
        self._broker_timer = None
        if not self.bus.connected and not self._stopped:
            self.ctx.health.fault("mqtt", f"the broker {self.settings.mqtt_url} has been unreachable "
                                  f"for more than {self.mqtt_grace:g}s")

    def _cancel_broker_timer(self) -> None:
        if self._broker_timer is not None and self._broker_timer.active():
            self._broker_timer.cancel()
        self._broker_timer = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.bus.will_set(self.status_topic, self.status("offline").to_json(), retain=True)
        self.ctx.health.on_change = self._health_changed
        self.bus.on_connect(self._broker_back)
        self.bus.on_disconnect(self._broker_gone)
        self._broker_gone()  # not connected yet: the grace period starts now
        self.bus.start()
        self.component = yield defer.maybeDeferred(self._start, self.ctx)
        self._status_loop.start(self.settings.status_interval, now=False)
        log.info("{service} {version} started as {instance}, broker {url}", service=self.name,
                 version=__version__, instance=self.settings.instance, url=str(self.settings.mqtt_url))
        return self.component

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self._stopped:
            return
        self._stopped = True
        self._cancel_broker_timer()
        if self._status_loop.running:
            self._status_loop.stop()
        if self.component is not None:
            try:
                yield _timeout(defer.maybeDeferred(self.component.stop), STOP_TIMEOUT / 2, self.reactor)
            except Exception:
                log.failure("{service} did not stop cleanly", service=self.name)
        if self.bus.connected:
            self.publish_status("offline")
            yield self.bus.flush(STOP_TIMEOUT / 2)
        self.bus.stop()
        log.info("{service} stopped", service=self.name)


def _timeout(d: defer.Deferred, seconds: float, reactor: Any) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


def run(name: str, settings: Settings, start: Start) -> int:
    """Run a service in the foreground until SIGTERM/SIGINT; returns the exit status."""
    from twisted.internet import reactor

    start_logging(name, settings.log_format)
    runtime = Runtime(name, settings, start, reactor)
    failed: list[Any] = []

    def started_failed(failure: Any) -> None:
        failed.append(failure)
        log.failure("{service} could not start", failure, service=name)
        reactor.stop()

    # Per-message garbage is short-lived, while a service's state (devices, templates, the
    # tables built at start-up) lives long: collect the young generation less often, and keep
    # what start-up built out of every later collection.
    gc.set_threshold(10_000, 20, 20)
    reactor.callWhenRunning(
        lambda: runtime.start().addCallback(lambda _: gc.freeze()).addErrback(started_failed))
    reactor.addSystemEventTrigger("before", "shutdown", runtime.stop)
    # Under ``pnp up`` the supervisor decides when to stop: a terminal's Ctrl-C reaches the
    # whole process group, and the supervisor follows it with SIGTERM.
    under_supervisor = _watch_parent(reactor)
    # After the reactor's own handlers are in (it needs SIGCHLD), replace its stop handlers.
    reactor.callWhenRunning(install_stop_signals, reactor, not under_supervisor)
    reactor.run()
    return 1 if failed else 0


def install_stop_signals(reactor: Any, interrupt: bool = True, hangup: bool = False) -> None:
    """SIGTERM (SIGINT unless told not to, SIGHUP if told to) stop the reactor once, however
    often they come."""
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:
            stopping.append(True)
            log.info("stopping on signal")
            reactor.stop()

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler if interrupt else signal.SIG_IGN)
    if hangup:
        signal.signal(signal.SIGHUP, handler)


def _watch_parent(reactor: Any) -> bool:
    """Under ``pnp up``, stop when the supervisor is gone, so no process is left behind."""
    parent = os.environ.get("PNP_PARENT_PID")
    if not parent or not parent.isdigit():
        return False
    # A supervisor that died while this process was starting is gone already (getppid differs
    # from the start): the check below then stops at once instead of never watching.

    def check() -> None:
        if os.getppid() != int(parent):
            log.warn("supervisor {pid} is gone; stopping", pid=parent)
            reactor.stop()

    task.LoopingCall(check).start(1.0, now=False)
    return True
