"""Console: the device manager in a browser. Every phone live from the retained topics, its
timeline and files, assigning (one, or a CSV/JSON file), profiles and service status.

Listens on PNP_CONSOLE_BIND:PNP_CONSOLE_PORT (127.0.0.1:8090), HTTPS with PNP_TLS_CERT and
PNP_TLS_KEY. Users and roles from PNP_CONSOLE_USERS (and PNP_CONSOLE_ADMIN_PASSWORD).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from console import settings as cs
from console.service import ConsoleService, Hub
from console.sessions import Sessions
from console.table import DeviceTable
from console.users import User, hash_password
from console.web import Console, load_assets, make_site
from fileserver.tls import TlsError, context_factory, listen
from services import settings as s
from services.runner import Context

SETTINGS = cs.ALL

log = Logger(namespace="console")


def check_settings(cfg: s.Settings) -> None:
    cs.check(cfg)
    if cfg.tls_cert is not None:
        try:
            context_factory(cfg.tls_cert, cfg.tls_key)
        except TlsError as exc:
            raise s.SettingError(cs.fs.TLS_CERT, str(cfg.tls_cert), str(exc)) from None


def users_of(cfg: s.Settings) -> dict[str, User]:
    users = dict(cfg.console_users)
    if cfg.console_admin_password and "admin" not in users:
        users["admin"] = User("admin", "admin", hash_password(cfg.console_admin_password))
    return users


class Running:
    def __init__(self, web: Console, port: Any) -> None:
        self.web = web
        self.port = port

    def stop(self) -> Any:
        self.web.stop()
        return self.port.stopListening()


def start(ctx: Context) -> Running:
    cfg = ctx.settings
    check_settings(cfg)
    users = users_of(cfg)
    table = DeviceTable()
    # The hub renders rows through the web side, built next (the lambdas look it up when called).
    hub = Hub(ctx.reactor, lambda macs, admin: web.rows_for(macs, admin),
              lambda mac, n, admin: web.timeline_for(mac, n, admin))
    service = ConsoleService(ctx, table, hub)
    web = Console(table, service, users, Sessions(), load_assets(), ctx.reactor, secure=cfg.tls_cert is not None)
    port = listen(ctx.reactor, make_site(web), cfg.console_port, cfg.console_bind, cfg.tls_cert, cfg.tls_key)
    service.start()
    web.start()
    scheme = "https" if cfg.tls_cert else "http"
    log.info("console on {scheme}://{bind}:{port}/ for {n} user(s)", scheme=scheme, bind=cfg.console_bind,
             port=port.getHost().port, n=len(users))
    if not users:
        log.warn("no console users: set PNP_CONSOLE_USERS (`pnp console-user`) or PNP_CONSOLE_ADMIN_PASSWORD")
    return Running(web, port)
