"""The ``pnp`` command: one subcommand per service, plus ``up`` and the operator tools.

``COMMANDS`` is the one table of every command: its name, the module that holds it and its
help. A service module has ``SETTINGS`` and ``start(ctx)`` (run by services.runner); a tool
module has ``configure(parser)`` and ``run(args) -> int``. Only the chosen command's module is
imported, so a tool does not pay for loading every service (``pnp health`` runs every few
seconds in each container).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from services import __version__
from services import settings as s


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    service: bool = False  # a long-running service, run by services.runner


COMMANDS = (
    Command("listener", "listener.main", "answer the phones' multicast SUBSCRIBE and publish what "
            "they are", service=True),
    Command("generator", "generator.main", "render each phone's configuration files from its "
            "assignment", service=True),
    Command("fileserver", "fileserver.main", "serve each phone its files, with checksums", service=True),
    Command("notifier", "notifier.main", "send each phone the SIP NOTIFY with its file's URL",
            service=True),
    Command("console", "console.main", "the device manager in a browser", service=True),
    Command("up", "tools.supervisor", "run everything on one machine: a broker and the five services"),
    Command("setup", "tools.brokersetup", "prepare a compose deployment: .env and the broker's "
            "password file"),
    Command("health", "tools.healthcheck", "exit 0 when a service is healthy, 1 when not"),
    Command("tls-cert", "tools.certs", "make a self-signed HTTPS certificate and key (a lab)"),
    Command("assign", "tools.assign", "publish assignments: from flags, a CSV or JSON file, or "
            "--unassign; --rearm/--rotate a phone's enrolment and credential"),
    Command("simulate", "tools.simulate.command", "simulate a fleet of phones booting against this PBX"),
    Command("devices", "tools.devices", "every device the broker knows and where it stands"),
    Command("monitor", "tools.monitor", "watch the live event stream, one line per message"),
    Command("console-user", "tools.consoleuser", "print a console login for PNP_CONSOLE_USERS"),
)

SERVICES = {c.name: c.module for c in COMMANDS if c.service}
TOOLS = {c.name: c.module for c in COMMANDS if not c.service}


def _service_command(name: str, module: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from services import runner

        settings = s.resolve(s.COMMON + module.SETTINGS, args)
        # settings that are only wrong together (raises SettingError: exit 2, one line)
        check = getattr(module, "check_settings", None)
        if check is not None:
            check(settings)
        return runner.run(name, settings, module.start)

    return run


def _chosen(argv: Sequence[str]) -> str | None:
    # The top-level options take no value, so the first word that is not one is the command.
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; only ``chosen``'s module is imported and configured
    (None: none, which is enough for ``pnp --help``; "*": every one)."""
    parser = argparse.ArgumentParser(
        prog="pnp",
        description="SIP phone Plug and Play around an MQTT broker. "
        "Settings come from flags or PNP_* environment variables (a flag wins).",
    )
    parser.add_argument("--version", action="version", version=f"pnp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        if chosen not in (command.name, "*"):
            sub.add_parser(command.name, help=command.help)
            continue
        module = importlib.import_module(command.module)
        p = sub.add_parser(command.name, help=command.help, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.service:
            s.add_arguments(p, s.COMMON + module.SETTINGS)
            p.set_defaults(func=_service_command(command.name, module))
        else:
            module.configure(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen(argv))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except s.SettingError as exc:
        print(f"pnp {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
