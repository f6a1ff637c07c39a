"""Run everything on one machine: a broker and the five services, each its own OS process.

Without PNP_MQTT_URL a private mosquitto is started on loopback (port 1883 when free, else a
free port) with persistence under PNP_DATA_DIR/broker, as one more child. Output is one stream,
each line prefixed by its service (the broker's by ``broker``); a child that exits, the broker
included, is restarted with backoff. Ctrl-C or SIGTERM stops the services, then the broker, and
leaves no process behind.
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
from services.broker import BrokerError, Mosquitto, answers, find_mosquitto, free_port, port_is_free

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


# A line longer than this (a child writing without newlines) is passed on in pieces.
LINE_MAX = 65536
BROKER = "broker"
BROKER_START_TIMEOUT = 10.0
# Runs the broker so that it gets SIGTERM (and saves its database) when `pnp up` dies, even by
# kill -9: the services notice that by themselves (PNP_PARENT_PID), mosquitto cannot. A broker
# left behind would keep the port, and the next `pnp up` would start a second one on the same
# persistence directory, each overwriting the other's database. prctl(PR_SET_PDEATHSIG) outlives
# the exec; the getppid check covers a parent that died before it was set.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class _Child(protocol.ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", name: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self._partial = {1: b"", 2: b""}
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        rest = lines.pop()
        while len(rest) > LINE_MAX:
            lines.append(rest[:LINE_MAX])
            rest = rest[LINE_MAX:]
        self._partial[fd] = rest
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
    """Keeps one process per service, and the broker if given one, running until :meth:`stop`.

    The broker is a child like the services: its output is read as it comes (so it can never
    block on a full pipe) and shown as ``broker | ...``; when it dies it is started again on the
    same port with the same persistence directory, and the services reconnect by themselves.
    The services start once the broker first answers; if it never does, ``exit_code`` is 1 and
    the reactor stops.
    """

    def __init__(self, reactor: Any, names: list[str], env: dict[str, str], out: Any = None,
                 broker: Mosquitto | None = None) -> None:
        self.reactor = reactor
        self.names = names
        self.env = env
        self.out = out or sys.stdout
        self.broker = broker
        self.children: dict[str, _Child] = {}
        self.transports: dict[str, Any] = {}
        self.backoff = {name: 1.0 for name in [BROKER, *names]}
        self.pending: dict[str, Any] = {}
        self.stopping = False
        self.broker_answered = False
        self.exit_code = 0
        self.width = max(len(n) for n in [*names, BROKER if broker else "pnp"])

    def emit(self, name: str, line: str) -> None:
        try:
            self.out.write(f"{name:<{self.width}} | {line}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def start(self) -> None:
        if self.broker is None:
            self._start_services()
            return
        if not port_is_free(self.broker.port, self.broker.host):
            # Checked first: a foreign listener would answer for a broker that never started.
            return self._fail(f"port {self.broker.port} on {self.broker.host} is taken; set "
                              f"PNP_BROKER_PORT to a free port, or PNP_MQTT_URL to use that broker")
        self.spawn(BROKER)
        deadline = self.reactor.seconds() + BROKER_START_TIMEOUT
        self.reactor.callLater(0, self._await_broker, deadline)

    def _start_services(self) -> None:
        for name in self.names:
            self.spawn(name)

    def _await_broker(self, deadline: float) -> None:
        if self.stopping:
            return
        child = self.children.get(BROKER)
        if child is None or child.ended.called:
            return self._fail("the broker exited at start (its lines above say why)")
        assert self.broker is not None  # a broker child exists only when we run the broker
        if answers(self.broker.host, self.broker.port):
            self.broker_answered = True
            return self._start_services()
        if self.reactor.seconds() > deadline:
            return self._fail(f"the broker did not answer on {self.broker.host}:{self.broker.port} "
                              f"within {BROKER_START_TIMEOUT:.0f}s")
        self.reactor.callLater(0.05, self._await_broker, deadline)

    def _fail(self, why: str) -> None:
        self.emit("pnp", why)
        self.exit_code = 1
        if self.reactor.running:
            self.reactor.stop()

    def spawn(self, name: str) -> None:
        self.pending.pop(name, None)
        if self.stopping:
            return
        if name == BROKER:
            assert self.broker is not None  # spawned only when we run the broker
            try:
                argv = self.broker.argv()
            except (BrokerError, OSError) as exc:
                # e.g. its directory became unwritable: a restart is tried again later
                self.emit("pnp", f"cannot start the broker: {exc}")
                if not self.broker_answered:
                    return self._fail("the broker cannot start")
                return self._restart_later(name, self.reactor.seconds(), "could not start")
            if sys.platform.startswith("linux"):
                argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
        else:
            argv = [sys.executable, "-m", "tools.cli", name]
        child = _Child(self, name)
        self.transports[name] = self.reactor.spawnProcess(child, argv[0], argv, env=self.env)
        self.children[name] = child

    def child_ended(self, child: _Child, code: int | None, sig: int | None) -> None:
        how = f"signal {sig}" if sig else f"status {code}"
        if self.stopping:
            if child.name == BROKER:
                self.emit("pnp", f"broker stopped ({how})")
            return
        if child.name == BROKER and not self.broker_answered:
            return  # _await_broker reports it
        self._restart_later(child.name, child.started, f"exited with {how}")

    def _restart_later(self, name: str, started: float, what: str) -> None:
        if self.reactor.seconds() - started > STABLE_AFTER:
            self.backoff[name] = 1.0
        delay = self.backoff[name]
        self.backoff[name] = min(delay * 2, BACKOFF_MAX)
        self.emit("pnp", f"{name} {what}; restarting in {delay:.0f}s")
        self.pending[name] = self.reactor.callLater(delay, self.spawn, name)

    def stop(self) -> defer.Deferred:
        """Stop the services, then the broker (so the services' last words reach it, and it
        saves its database once they are gone)."""
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        done = self._terminate([n for n in self.children if n != BROKER])
        if BROKER in self.children:
            done.addCallback(lambda _: self._terminate([BROKER]))
        return done

    def _terminate(self, names: list[str]) -> defer.Deferred:
        waits = []
        for name in names:
            child = self.children[name]
            if child.ended.called:
                continue
            try:
                self.transports[name].signalProcess("TERM")
            except Exception:
                pass
            waits.append(child.ended)
        if not waits:
            return defer.succeed(None)
        done = defer.DeferredList(waits, consumeErrors=True)

        def kill_rest() -> None:
            for name in names:
                if not self.children[name].ended.called:
                    self.emit("pnp", f"{name} did not stop in {STOP_GRACE:.0f}s; killing it")
                    try:
                        self.transports[name].signalProcess("KILL")
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
        try:
            find_mosquitto()
        except BrokerError as exc:
            print(f"pnp up: {exc}", file=sys.stderr)
            return 1
        port = settings.broker_port or (1883 if port_is_free(1883) else free_port())
        broker = Mosquitto(Path(settings.data_dir) / "broker", port=port)
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

    supervisor = Supervisor(reactor, names, env, broker=broker)
    reactor.callWhenRunning(supervisor.start)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    reactor.callWhenRunning(install_stop_signals, reactor, True, True)
    reactor.run()
    return supervisor.exit_code


def _url_with_secret(url: s.MqttUrl) -> str:
    from urllib.parse import quote

    auth = ""
    if url.username:
        auth = quote(url.username, safe="")
        if url.password:
            auth += ":" + quote(url.password, safe="")
        auth += "@"
    return f"{url.scheme}://{auth}{url.host}:{url.port}"
