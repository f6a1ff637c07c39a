"""The ``pnp`` command: one subcommand per service, plus ``up`` and the operator tools."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from services import __version__
from services import settings as s

# Each service package has a ``main`` module with SETTINGS and start(ctx).
SERVICES = {
    "listener": "listener.main",
    "generator": "generator.main",
    "fileserver": "fileserver.main",
    "notifier": "notifier.main",
    "console": "console.main",
}

# Each tool module has configure(parser) and run(args) -> int, and a docstring whose first
# line is its help.
TOOLS = {
    "up": "tools.supervisor",
    "setup": "tools.brokersetup",
    "health": "tools.healthcheck",
    "tls-cert": "tools.certs",
    "assign": "tools.assign",
    "simulate": "tools.simulate.command",
    "devices": "tools.devices",
    "monitor": "tools.monitor",
    "console-user": "tools.consoleuser",
}


def _service_command(name: str, module: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from services import runner

        settings = s.resolve(s.COMMON + module.SETTINGS, args)
        # settings that are only wrong together (raises SettingError: exit 2, one line)
        check = getattr(module, "check_settings", None)
        if check is not None:
            check(settings)
        return runner.run(name, settings, module.start)

    return run


def _summary(module: Any) -> str:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pnp",
        description="SIP phone Plug and Play around an MQTT broker. "
        "Settings come from flags or PNP_* environment variables (a flag wins).",
    )
    parser.add_argument("--version", action="version", version=f"pnp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, path in TOOLS.items():
        module = importlib.import_module(path)
        p = sub.add_parser(name, help=_summary(module), description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        p.set_defaults(func=module.run)
    for name, path in SERVICES.items():
        module = importlib.import_module(path)
        p = sub.add_parser(name, help=_summary(module), description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_arguments(p, s.COMMON + module.SETTINGS)
        p.set_defaults(func=_service_command(name, module))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
