"""Run everything on one machine: a broker and the five services, each its own OS process.

Without PNP_MQTT_URL a private mosquitto is started on loopback (port 1883 when free, else a
free port) with persistence under PNP_DATA_DIR/broker. Service output is one stream, each line
prefixed by its service; a service that exits is restarted with backoff. Ctrl-C or SIGTERM stops
the services and the broker and leaves no process behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol

from services import settings as s
from services.runner import install_stop_signals
from services.broker import BrokerError, Mosquitto, port_is_free, free_port

SERVICE_NAMES = ("listener", "generator", "fileserver", "notifier", "console")
BROKER_PORT = s.Setting(
    "broker_port", "PNP_BROKER_PORT", "port of the broker that `pnp up` starts",
    s.parse_port, "a port number 1-65535", None,
)
SETTINGS = s.CONTRACT + [s.LOG_FORMAT, s.STATUS_INTERVAL]
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0
STOP_GRACE = 5.0


def configure(parser: argparse.ArgumentParser) -> None:
    s.add_arguments(parser, SETTINGS + [BROKER_PORT])
    parser.add_argument("--services", default=",".join(SERVICE_NAMES), metavar="NAMES",
                        help="which services to run, comma-separated [default: all five]")


class _Child(protocol.ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", name: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self._partial = {1: b"", 2: b""}
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self.supervisor.emit(self.name, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.supervisor.emit(self.name, rest.decode("utf-8", "replace"))
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ended.callback(None)
        self.supervisor.child_ended(self, code, sig)


class Supervisor:
    """Keeps one process per service running until :meth:`stop`."""

    def __init__(self, reactor: Any, names: list[str], env: dict[str, str], out: Any = None) -> None:
        self.reactor = reactor
        self.names = names
        self.env = env
        self.out = out or sys.stdout
        self.children: dict[str, _Child] = {}
        self.transports: dict[str, Any] = {}
        self.backoff = {name: 1.0 for name in names}
        self.pending: dict[str, Any] = {}
        self.stopping = False
        self.width = max(len(n) for n in names)

    def emit(self, name: str, line: str) -> None:
        try:
            self.out.write(f"{name:<{self.width}} | {line}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def start(self) -> None:
        for name in self.names:
            self.spawn(name)

    def spawn(self, name: str) -> None:
        self.pending.pop(name, None)
        if self.stopping:
            return
        child = _Child(self, name)
        argv = [sys.executable, "-m", "services.cli", name]
        self.transports[name] = self.reactor.spawnProcess(child, sys.executable, argv, env=self.env)
        self.children[name] = child

    def child_ended(self, child: _Child, code: int | None, sig: int | None) -> None:
        if self.stopping:
            return
        name = child.name
        if self.reactor.seconds() - child.started > STABLE_AFTER:
            self.backoff[name] = 1.0
        delay = self.backoff[name]
        self.backoff[name] = min(delay * 2, BACKOFF_MAX)
        how = f"signal {sig}" if sig else f"status {code}"
        self.emit("pnp", f"{name} exited with {how}; restarting in {delay:.0f}s")
        self.pending[name] = self.reactor.callLater(delay, self.spawn, name)

    def stop(self) -> defer.Deferred:
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        waits = []
        for name, transport in self.transports.items():
            child = self.children[name]
            if child.ended.called:
                continue
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass
            waits.append(child.ended)
        if not waits:
            return defer.succeed(None)
        done = defer.DeferredList(waits, consumeErrors=True)

        def kill_rest() -> None:
            for name, transport in self.transports.items():
                if not self.children[name].ended.called:
                    self.emit("pnp", f"{name} did not stop in {STOP_GRACE:.0f}s; killing it")
                    try:
                        transport.signalProcess("KILL")
                    except Exception:
                        pass

        timer = self.reactor.callLater(STOP_GRACE, kill_rest)
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return done


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    settings = s.resolve(SETTINGS + [BROKER_PORT], args)
    names = [n.strip() for n in args.services.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown or not names:
        print(f"pnp up: --services: {args.services!r} is not allowed: names from "
              f"{', '.join(SERVICE_NAMES)}", file=sys.stderr)
        return 2

    url_given = bool(getattr(args, "mqtt_url", None) or os.environ.get("PNP_MQTT_URL"))
    broker = None
    if not url_given:
        port = settings.broker_port or (1883 if port_is_free(1883) else free_port())
        broker = Mosquitto(Path(settings.data_dir) / "broker", port=port)
        try:
            broker.start()
        except BrokerError as exc:
            print(f"pnp up: {exc}", file=sys.stderr)
            return 1
        settings = settings.replace(mqtt_url=s.parse_mqtt_url(broker.url))
        print(f"pnp up: broker {broker.url} (data in {broker.directory})", flush=True)
        print(f"pnp up: watch it with: mosquitto_sub -p {broker.port} -v -t "
              f"'{settings.topic_prefix}/#'", flush=True)
    else:
        print(f"pnp up: using broker {settings.mqtt_url}", flush=True)

    env = dict(os.environ)
    env.update(settings.as_env(SETTINGS))
    env["PNP_MQTT_URL"] = _url_with_secret(settings.mqtt_url)
    env["PNP_PARENT_PID"] = str(os.getpid())
    if settings.log_format == "auto":
        env["PNP_LOG_FORMAT"] = "text" if sys.stdout.isatty() else "json"

    supervisor = Supervisor(reactor, names, env)
    reactor.callWhenRunning(supervisor.start)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    reactor.callWhenRunning(install_stop_signals, reactor, True, True)
    try:
        reactor.run()
    finally:
        if broker is not None:
            broker.stop()
            print("pnp up: broker stopped", flush=True)
    return 0


def _url_with_secret(url: s.MqttUrl) -> str:
    from urllib.parse import quote

    auth = ""
    if url.username:
        auth = quote(url.username, safe="")
        if url.password:
            auth += ":" + quote(url.password, safe="")
        auth += "@"
    return f"{url.scheme}://{auth}{url.host}:{url.port}"
