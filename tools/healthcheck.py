"""Exit 0 when a service is healthy, 1 when not: the containers' healthcheck.

Healthy means the service's retained status on the broker (pnp/services/{service}/{instance})
says online, not degraded (its store written, its broker reachable), and was refreshed within
--max-age seconds (default: three status intervals, plus slack). It logs in with PNP_MQTT_URL, the service's own credentials, which may read its own
status topic. With --healthz (the fileserver) its GET /healthz on this host must answer 200 too.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.request
from datetime import datetime, timezone
from typing import Any

from twisted.internet import defer

from services import settings as s
from services.mqtt import Incoming
from services.messages import PayloadError, ServiceStatus
from services.topics import SERVICES, Topics
from tools import mqttclient
from tools.mqttclient import BrokerProblem, Session

SETTINGS = [s.MQTT_URL, s.TOPIC_PREFIX, s.INSTANCE, s.STATUS_INTERVAL]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", choices=SERVICES)
    s.add_arguments(parser, SETTINGS)
    parser.add_argument("--max-age", type=float, default=None, metavar="SECONDS",
                        help="oldest status still healthy [default: 3 x PNP_STATUS_INTERVAL + 5]")
    parser.add_argument("--healthz", action="store_true",
                        help="also GET the fileserver's /healthz here (https when PNP_TLS_CERT is set, "
                        "port PNP_HTTP_PORT); healthy only on 200")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the broker and the URL [default: 5]")


@defer.inlineCallbacks
def read_status(settings: s.Settings, service: str, timeout: float, reactor: Any) -> Any:
    """Fires with the service's retained status, or a string saying why there is none."""
    topic = Topics(settings.topic_prefix).service(service, settings.instance)
    got: defer.Deferred = defer.Deferred()

    def found(raw: bytes) -> None:
        if not got.called:
            got.callback(raw)

    def on_status(msg: Incoming) -> None:
        # on the next turn: the Bus is closed as soon as the status is here (Session.close)
        reactor.callLater(0, found, msg.raw)

    session = Session(settings.mqtt_url, "health", reactor)
    try:
        yield session.open(timeout, lambda bus: bus.subscribe(topic, on_status))
    except BrokerProblem as exc:
        return str(exc)
    try:
        # A retained status comes right after the subscription is acknowledged, or never.
        got.addTimeout(timeout, reactor)
        try:
            raw = yield got
        except defer.TimeoutError:
            return f"no status on {topic} within {timeout:g}s"
    finally:
        session.close()
    if not raw:
        return f"status on {topic} is empty"
    try:
        return ServiceStatus.from_json(raw)
    except PayloadError as exc:
        return f"status on {topic} is not a status: {exc}"


def judge(status: ServiceStatus, max_age: float, now: datetime) -> str | None:
    """Why ``status`` is unhealthy, or None."""
    if status.state != "online":
        return f"state is {status.state!r}"
    if status.health != "ok":
        reasons = "; ".join(status.reasons.values()) or "no reason given"
        return f"{status.health}: {reasons}"
    try:
        at = datetime.fromisoformat(status.at or status.started_at)
    except ValueError:
        return f"status time {status.at!r} is not ISO 8601"
    age = (now - at).total_seconds()
    if age > max_age:
        return f"status is {age:.0f}s old (more than {max_age:g}s)"
    return None


def healthz_url(environ: dict[str, str] | None = None) -> str:
    """The fileserver's /healthz on this host, from the fileserver's own settings."""
    from fileserver import settings as fs

    values = s.resolve([s.HTTP_PORT, fs.HTTP_BIND, fs.TLS_CERT], {}, environ)
    host = "127.0.0.1" if values.http_bind == "0.0.0.0" else values.http_bind
    scheme = "https" if values.tls_cert else "http"
    return f"{scheme}://{host}:{values.http_port}/healthz"


def check_http(url: str, timeout: float) -> str | None:
    # A liveness check on this host's own port: the certificate names the public host, not
    # 127.0.0.1, so it is not verified here.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def run(args: argparse.Namespace) -> int:
    settings = s.resolve(SETTINGS, args)
    max_age = args.max_age if args.max_age is not None else 3 * settings.status_interval + 5
    status = mqttclient.run(lambda reactor: read_status(settings, args.service, args.timeout, reactor))
    problem = status if isinstance(status, str) else judge(status, max_age, datetime.now(timezone.utc))
    if problem is None and args.healthz:
        problem = check_http(healthz_url(), args.timeout)
    if problem:
        print(f"{args.service} unhealthy: {problem}", file=sys.stderr)
        return 1
    notices = "" if isinstance(status, str) else "; ".join(status.notices.values())
    print(f"{args.service} healthy" + (f" (earlier: {notices})" if notices else ""))
    return 0
