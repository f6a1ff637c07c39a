"""Fileserver: serves each phone its files, with checksums.

Keeps every device's files (from pnp/devices/+/config) in its own database, serves them over
HTTP(S) under a per-device secret path, announces them on pnp/devices/{mac}/published and
reports each download on pnp/devices/{mac}/fetched. GET /healthz and /metrics for operators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger

from fileserver import settings as fs
from fileserver.abuse import NotFoundLimiter
from fileserver.auth import Authenticator
from fileserver.catalog import Catalog
from fileserver.core import FileCore
from fileserver.enrolment import Enrolments
from fileserver.gate import Gate
from fileserver.metrics import Metrics
from fileserver.provision import ProvisionTracker
from fileserver.refill import Refill
from fileserver.resource import FileResource, Policy, make_site
from fileserver.service import FileService, Fileserver
from fileserver.settings import SETTINGS
from fileserver.store import Store
from fileserver.tls import check_tls, listen
from fileserver.tokens import load_or_create_secret
from services.runner import Context
from services.settings import Settings

__all__ = ["SETTINGS", "check_settings", "start"]

log = Logger(namespace="fileserver")


def secret_path(cfg: Settings) -> Path:
    return Path(cfg.data_dir) / "fileserver.secret"


def check_settings(cfg: Settings) -> None:
    """Before anything starts: settings that only work together, and readable TLS files."""
    fs.check(cfg)
    if cfg.file_secret is None:
        # read (or made) before anything starts: a damaged one stops here with exit status 2
        load_or_create_secret(secret_path(cfg))
    check_tls(cfg)


def start(ctx: Context) -> Fileserver:
    cfg = ctx.settings
    check_settings(cfg)
    store = Store(ctx.database_path(), clock=ctx.reactor, health=ctx.health)
    secret = cfg.file_secret or load_or_create_secret(secret_path(cfg))
    auth = Authenticator(cfg.http_auth, cfg.http_user, cfg.http_password) if cfg.http_auth != "off" else None
    # one book of enrolments and one tracker: the core moves them, the HTTP side's gate reads them
    enrolments = Enrolments(cfg.enrol_window, store.enrolments())
    tracker = ProvisionTracker(store.fetch_states(), store.retired())
    policy = Policy(prefix=urlsplit(cfg.public_url).path or "/", plain_paths=cfg.plain_paths,
                    auth=auth, trusted_proxies=cfg.trusted_proxies,
                    gate=Gate(enrolments, tracker, cfg.pin_ip))
    catalog = Catalog(secret, cfg.public_url)
    core = FileCore(catalog, tracker, store.errored(), enrolments, cfg.instance, ctx.counters)
    limiter = NotFoundLimiter(cfg.not_found_limit, cfg.not_found_window, cfg.ban_seconds)
    metrics = Metrics()
    service = FileService(ctx, core, store, limiter, metrics)
    service.load(store.load())
    if store.rebuilt:
        Refill(ctx, core, store).start()
    root = FileResource(catalog, policy, limiter, metrics, service.fetched, ctx.reactor,
                        service.health, service.gauges)

    def serve() -> Any:
        port = listen(ctx.reactor, make_site(root, cfg.http_head_timeout), cfg.http_port,
                      cfg.http_bind, cfg.tls_cert, cfg.tls_key, cfg.http_backlog)
        scheme = "https" if cfg.tls_cert else "http"
        log.info("serving {scheme} on {bind}:{port}; phones are told {url}", scheme=scheme,
                 bind=cfg.http_bind, port=port.getHost().port, url=cfg.public_url)
        if scheme != urlsplit(cfg.public_url).scheme:
            log.warn("PNP_PUBLIC_URL {url} is not {scheme}: phones will be told the wrong scheme",
                     url=cfg.public_url, scheme=scheme)
        return port

    return Fileserver(service, serve, store).start()
