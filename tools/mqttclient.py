"""How the command-line tools talk to the broker: the services' reactor ``Bus``, for one job.

A service's Bus reconnects for ever, which is right for a service and wrong for a command: a
command that cannot reach the broker, or whose login or subscription is refused, should stop
at once with one line saying why. :class:`Session` gives a started Bus once it is connected
and subscribed, or fails with :class:`BrokerProblem` on the Bus's first complaint. The Bus
says what went wrong only in its log, so that is where the complaint is read from.
:func:`run` runs the reactor for one job and returns its result.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from services.mqtt import Bus
from services.settings import MqttUrl

_COMPLAINTS = {LogLevel.warn, LogLevel.error, LogLevel.critical}


class BrokerProblem(ConnectionError):
    """The broker cannot be reached, or refused the login, a subscription or a publish."""


@implementer(ILogObserver)
class _Complaints:
    """Tells ``on_first`` the first thing the Bus logs as wrong, in a line for the user."""

    def __init__(self) -> None:
        self.on_first: Callable[[str], None] | None = None

    def __call__(self, event: dict) -> None:
        if event.get("log_namespace") != "bus" or event.get("log_level") not in _COMPLAINTS:
            return
        url = event.get("url", "")
        if "error" in event:  # not reachable: refused, timed out, name unknown, TLS failed
            why = f"cannot reach the broker {url}: {event['error']}"
        elif "refused the connection" in (event.get("log_format") or ""):
            why = f"the broker {url} refused the login: {event.get('reason')}"
        else:
            why = formatEvent(event)
        if self.on_first is not None:
            call, self.on_first = self.on_first, None
            call(why)


def client_id(tool: str) -> str:
    # Unique per run: two containers' healthchecks must not take over each other's session.
    return f"pnp-{tool}-{secrets.token_hex(4)}"


class Session:
    """One Bus for one job of one tool."""

    def __init__(self, url: MqttUrl, tool: str, reactor: Any) -> None:
        self.url = url
        self.tool = tool
        self.reactor = reactor
        self.bus: Bus | None = None
        self._complaints = _Complaints()

    def open(self, timeout: float, subscribe: Callable[[Bus], None] | None = None) -> defer.Deferred:
        """Start the Bus; fires with it once connected and every subscription that
        ``subscribe(bus)`` makes is acknowledged. Fails with BrokerProblem on the Bus's first
        complaint, or after ``timeout`` seconds, and then stops the Bus."""
        bus = self.bus = Bus(self.url, client_id(self.tool), self.reactor, backoff_max=1.0)
        globalLogPublisher.addObserver(ILogObserver(self._complaints))
        if subscribe is not None:
            subscribe(bus)
        outcome: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> None:
            if outcome.called:
                return
            if isinstance(result, Bus):
                outcome.callback(result)
            else:
                outcome.errback(result)

        def settle(result: Any) -> None:
            # Called from inside paho's callbacks, where stopping the Bus (or much else) would
            # deadlock on paho's callback lock: the outcome is given on the next turn.
            self.reactor.callLater(0, fire, result)

        self._complaints.on_first = lambda why: settle(BrokerProblem(why))
        timer = self.reactor.callLater(timeout, lambda: settle(BrokerProblem(
            f"the broker {self.url} did not answer within {timeout:g}s")))
        bus.when_subscribed().addCallback(lambda _: settle(bus))

        def done(result: Any) -> Any:
            self._complaints.on_first = None
            if timer.active():
                timer.cancel()
            if not isinstance(result, Bus):
                self.close()
            return result

        outcome.addBoth(done)
        bus.start()
        return outcome

    def close(self) -> None:
        """Disconnect cleanly (what was acknowledged stays) and stop reading the Bus's log.
        Not from inside a Bus handler (paho's callback lock is held there): a turn later."""
        if self.bus is not None:
            self.bus.stop()
        globalLogPublisher.removeObserver(ILogObserver(self._complaints))


def run(job: Callable[[Any], defer.Deferred]) -> Any:
    """Run the reactor until ``job(reactor)`` fires; return its result or raise its exception.
    Ctrl-C or SIGTERM first: KeyboardInterrupt. Once per process (a reactor does not restart)."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    outcome: dict[str, Any] = {}

    def stop(_: Any) -> None:
        if reactor.running:
            reactor.stop()

    def start() -> None:
        d = defer.maybeDeferred(job, reactor)
        d.addCallbacks(lambda result: outcome.setdefault("result", result),
                       lambda failure: outcome.setdefault("failure", failure))
        d.addBoth(stop)

    reactor.callWhenRunning(start)
    reactor.run()
    if "failure" in outcome:
        outcome["failure"].raiseException()
    if "result" not in outcome:
        raise KeyboardInterrupt
    return outcome["result"]
