"""Simulate a fleet of Plug and Play phones booting against this PBX.

Each phone gets its own loopback address (127.0.0.2, 127.0.0.3, ...) and its vendor's SIP port,
SUBSCRIBEs to 224.0.1.75 on PNP_SIP_PORT in its vendor's exact shape (multicast kept on
loopback, TTL 0), answers the NOTIFY, fetches its file(s) with its vendor's User-Agent, checks
ETag/Repr-Digest against the body's sha256, "reboots" and fetches again expecting the same
checksum or a 304. Then it is provisioned.

A live progress line goes to stderr, then a summary to stdout: provisioned, failed (step and
reason per phone), throughput and p50/p95/p99 latencies; --json for machines. Exit status 0 when
every phone was provisioned, 1 when any was not, 2 for a bad option.

examples:
  pnp simulate --sip-port 5060 --count 20 --models GRP2614,T46S,D785 --assign
  pnp simulate --count 1000 --boot-over 0 --assign --json > storm.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fileserver import settings as fs
from services import settings as s
from tools.simulate.fleet import Fleet, PlanError, Progress, plan, settle_gc
from tools.simulate.phone import Timing
from tools.simulate.vendors import VENDORS, UnknownModel

# The phones answer the fileserver's 401 with the credentials it is configured with.
SETTINGS = [s.SIP_PORT, s.MQTT_URL, s.TOPIC_PREFIX, fs.HTTP_USER, fs.HTTP_PASSWORD]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds >= 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    known = "; ".join(f"{v.name}: {', '.join(v.models)}" for v in VENDORS.values())
    parser.add_argument("--count", "-n", type=_positive_int, default=1, metavar="N",
                        help="how many phones [default: 1]")
    parser.add_argument("--models", default="GRP2614", metavar="LIST",
                        help=f"comma-separated models (or vendor names), taken in turn [default: GRP2614]; "
                             f"known: {known}")
    parser.add_argument("--boot-over", type=_seconds, default=0.0, metavar="SECONDS",
                        help="spread the boots evenly over this long; 0 = a boot storm [default: 0]")
    parser.add_argument("--assign", action="store_true",
                        help="first publish a pre-staged assignment (vendor, model, one account) for each "
                             "phone on PNP_MQTT_URL and wait for its files to be published")
    parser.add_argument("--sip-server", default="pbx.example.com", metavar="HOST",
                        help="sip_server of the --assign accounts [default: pbx.example.com]")
    parser.add_argument("--first-user", type=int, default=1001, metavar="N",
                        help="user_id of the first --assign account, counted up [default: 1001]")
    parser.add_argument("--wait-published", type=_seconds, default=60.0, metavar="SECONDS",
                        help="with --assign: wait up to this long for every phone's files [default: 60]")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    parser.add_argument("--timeout", type=_seconds, default=120.0, metavar="SECONDS",
                        help="bound of the run after the last boot; phones still busy then fail [default: 120]")
    parser.add_argument("--notify-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="how long a phone waits for the NOTIFY after the answer [default: 30]")
    parser.add_argument("--reboot-delay", type=_seconds, default=0.2, metavar="SECONDS",
                        help="how long a phone takes to reboot after its first download [default: 0.2]")
    parser.add_argument("--linger", type=_seconds, default=0.0, metavar="SECONDS",
                        help="keep the phones up this long after the last is done, answering check-sync "
                             "resyncs (fetch, reboot, check again) [default: 0]")
    parser.add_argument("--fetch-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="HTTP connect+response timeout [default: 10]")
    parser.add_argument("--fetch-retries", type=int, default=2, metavar="N",
                        help="retries of a download after a connection failure, timeout or 5xx "
                             "(2 s, 4 s, ... apart) [default: 2]")
    parser.add_argument("--address-start", default="127.0.0.2", metavar="IP",
                        help="first phone's loopback address, counted up [default: 127.0.0.2]")
    parser.add_argument("--mac-start", type=lambda x: int(x, 0), default=1, metavar="N",
                        help="first phone's number in the low 24 bits of its MAC, decimal or 0x hex "
                             "(--mac-start 0x500 with Yealink: 001565000500) [default: 1]")
    parser.add_argument("--phone-port", type=int, default=None, metavar="PORT",
                        help="bind every phone to this port instead of its vendor's (5080 Grandstream, "
                             "5059 Yealink, 5060 snom/Fanvil)")
    parser.add_argument("--ca-cert", default=None, metavar="PEM",
                        help="trust this CA for https:// URLs (e.g. pnp tls-cert's)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (Call-IDs, tags, branches)")
    s.add_arguments(parser, SETTINGS)


def _error(message: str) -> int:
    print(f"pnp simulate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    settings = s.resolve(SETTINGS, args)
    try:
        idents = plan(args.count, [m for m in args.models.split(",") if m.strip()],
                      args.address_start, args.mac_start, args.phone_port)
    except (PlanError, UnknownModel) as exc:
        return _error(str(exc))
    credentials = None
    if settings.http_user and settings.http_password:
        credentials = (settings.http_user, settings.http_password)
    trust = None
    if args.ca_cert:
        from twisted.internet.ssl import Certificate

        try:
            with open(args.ca_cert, "rb") as fh:
                trust = Certificate.loadPEM(fh.read())
        except (OSError, ValueError, Exception) as exc:  # pyOpenSSL raises its own Error
            return _error(f"--ca-cert {args.ca_cert!r}: {exc}")

    from twisted.internet import defer, reactor

    from services.runner import install_stop_signals

    live = not args.quiet
    tty = sys.stderr.isatty()
    last_plain = [0.0]

    def progress(p: Progress) -> None:
        if not live:
            return
        if tty:
            sys.stderr.write("\r" + p.line() + "\033[K")
            sys.stderr.flush()
        elif p.elapsed - last_plain[0] >= 5 or p.provisioned + p.failed == p.total:
            last_plain[0] = p.elapsed
            print(p.line(), file=sys.stderr, flush=True)

    outcome: dict[str, Any] = {}
    # This process's own CPU, staging and phones apart: in a storm on one machine the
    # simulator's CPU is CPU the PBX did not get, so a bench reads it beside the services'.
    cpu: dict[str, float] = {}

    @defer.inlineCallbacks
    def main() -> Any:
        try:
            cpu["start"] = time.process_time()
            if args.assign:
                from tools.simulate.staging import StagingError, stage

                def staged(done: int, total: int) -> None:
                    if live and tty:
                        sys.stderr.write(f"\rstaging: files published for {done}/{total} phones\033[K")
                        sys.stderr.flush()

                try:
                    n = yield stage(idents, settings.mqtt_url, settings.topic_prefix,
                                    sip_server=args.sip_server, first_user=args.first_user,
                                    wait_published=args.wait_published, on_progress=staged)
                except StagingError as exc:
                    outcome["error"] = str(exc)
                    return
                if live:
                    end = "\n" if tty else ""
                    print(f"{end}staged {len(idents)} assignments; files published for {n}", file=sys.stderr)
            cpu["staged"] = time.process_time()  # building the phones counts as theirs
            timing = Timing(notify_timeout=args.notify_timeout, reboot_delay=args.reboot_delay,
                            fetch_retries=max(0, args.fetch_retries))
            fleet = Fleet(idents, settings.sip_port, timing, boot_over=args.boot_over,
                          timeout=args.timeout, fetch_timeout=args.fetch_timeout, seed=args.seed,
                          trust=trust, on_progress=progress if live else None, linger=args.linger,
                          credentials=credentials)
            outcome["fleet"] = fleet
            settle_gc()  # the phones are built: they live as long as this process
            outcome["report"] = yield fleet.run()
            cpu["done"] = time.process_time()
        except Exception as exc:  # report, never hang the reactor
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if reactor.running:
                reactor.stop()

    install_stop_signals(reactor)
    reactor.callWhenRunning(main)
    reactor.run()
    if live and tty:
        sys.stderr.write("\n")
    if "error" in outcome:
        return _error(outcome["error"]) if "report" not in outcome else 1
    report = outcome.get("report")
    if report is None:  # interrupted
        fleet = outcome.get("fleet")
        if fleet is None:
            return 130
        from tools.simulate.report import Report

        now = reactor.seconds()
        for phone in fleet.phones:
            phone.give_up(now)
        report = Report.of(fleet.phones, fleet._origin, now)
    own = {}
    if "done" in cpu:
        own = {"staging": round(cpu["staged"] - cpu["start"], 3), "phones": round(cpu["done"] - cpu["staged"], 3)}
    if args.json:
        data = report.to_dict()
        if own:
            data["simulator_cpu_s"] = own
        print(json.dumps(data, indent=2))
    else:
        print(report.text())
        if own:
            print(f"simulator CPU: staging {own['staging']:.2f} s, phones {own['phones']:.2f} s "
                  f"({own['phones'] / max(1, report.total) * 1000:.3f} ms per phone)")
    return 0 if report.ok else 1
