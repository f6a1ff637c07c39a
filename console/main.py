"""Console: the device manager in a browser. Every phone live from the retained topics, its
timeline and files, assigning (one, or a CSV/JSON file), profiles and service status.

Listens on PNP_CONSOLE_BIND:PNP_CONSOLE_PORT (127.0.0.1:8090), HTTPS with PNP_TLS_CERT and
PNP_TLS_KEY. Users and roles from PNP_CONSOLE_USERS (and PNP_CONSOLE_ADMIN_PASSWORD).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from console.service import READ_PACE, ConsoleComponent, ConsoleService, Hub
from console.sessions import Sessions
from console.settings import SETTINGS
from console.table import DeviceTable
from console.users import User, hash_password
from console.web import Console, load_assets, make_site
from fileserver.tls import check_tls, listen
from services.runner import Context
from services.settings import Settings

__all__ = ["SETTINGS", "check_settings", "start"]

log = Logger(namespace="console")


def check_settings(cfg: Settings) -> None:
    check_tls(cfg)


def users_of(cfg: Settings) -> dict[str, User]:
    users = dict(cfg.console_users)
    if cfg.console_admin_password and "admin" not in users:
        users["admin"] = User("admin", "admin", hash_password(cfg.console_admin_password))
    return users


def start(ctx: Context) -> ConsoleComponent:
    cfg = ctx.settings
    check_settings(cfg)
    users = users_of(cfg)
    table = DeviceTable()
    # The hub renders rows through the web side, built next (the lambdas look it up when called).
    hub = Hub(ctx.reactor, lambda macs, admin: web.rows_for(macs, admin),
              lambda mac, n, admin: web.timeline_for(mac, n, admin))
    service = ConsoleService(ctx, table, hub)
    web = Console(table, service, users, Sessions(), load_assets(), ctx.reactor, secure=cfg.tls_cert is not None)

    def serve() -> Any:
        port = listen(ctx.reactor, make_site(web), cfg.console_port, cfg.console_bind, cfg.tls_cert, cfg.tls_key)
        scheme = "https" if cfg.tls_cert else "http"
        log.info("console on {scheme}://{bind}:{port}/ for {n} user(s)", scheme=scheme,
                 bind=cfg.console_bind, port=port.getHost().port, n=len(users))
        if not users:
            log.warn("no console users: set PNP_CONSOLE_USERS (`pnp console-user`) or PNP_CONSOLE_ADMIN_PASSWORD")
        return port

    ctx.bus.pace_reads(READ_PACE)
    return ConsoleComponent(service, web, serve).start()
