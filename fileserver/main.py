"""Fileserver: serves each phone its files, with checksums.

Keeps every device's files (from pnp/devices/+/config) in its own database, serves them over
HTTP(S) under a per-device secret path, announces them on pnp/devices/{mac}/published and
reports each download on pnp/devices/{mac}/fetched. GET /healthz and /metrics for operators.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from twisted.logger import Logger

from services import settings as s
from services.runner import Context
from fileserver import settings as fs
from fileserver.abuse import NotFoundLimiter
from fileserver.auth import Authenticator
from fileserver.catalog import Catalog
from fileserver.metrics import Metrics
from fileserver.refill import Refill
from fileserver.resource import FileResource, Policy, make_site
from fileserver.service import FileService, Fileserver
from fileserver.store import Store
from fileserver.tls import TlsError, context_factory, listen
from fileserver.tokens import load_or_create_secret

SETTINGS = [s.HTTP_PORT, s.PUBLIC_URL, s.SIP_INTERFACE] + fs.ALL

log = Logger(namespace="fileserver")


def secret_path(cfg: s.Settings) -> Path:
    return Path(cfg.data_dir) / "fileserver.secret"


def check_settings(cfg: s.Settings) -> None:
    """Before anything starts: settings that only work together, and readable TLS files."""
    fs.check(cfg)
    if cfg.file_secret is None:
        # read (or made) before anything starts: a damaged one stops here with exit status 2
        load_or_create_secret(secret_path(cfg))
    if cfg.tls_cert is not None:
        try:
            context_factory(cfg.tls_cert, cfg.tls_key)
        except TlsError as exc:
            raise s.SettingError(fs.TLS_CERT, str(cfg.tls_cert), str(exc)) from None


def start(ctx: Context) -> Fileserver:
    cfg = ctx.settings
    check_settings(cfg)
    store = Store(ctx.database_path(), clock=ctx.reactor, health=ctx.health)
    secret = cfg.file_secret or load_or_create_secret(secret_path(cfg))
    auth = Authenticator(cfg.http_auth, cfg.http_user, cfg.http_password) if cfg.http_auth != "off" else None
    policy = Policy(prefix=urlsplit(cfg.public_url).path or "/", plain_paths=cfg.plain_paths,
                    auth=auth, pin_ip=cfg.pin_ip, trusted_proxies=cfg.trusted_proxies)
    limiter = NotFoundLimiter(cfg.not_found_limit, cfg.not_found_window, cfg.ban_seconds)
    metrics = Metrics()
    service = FileService(ctx, store, Catalog(secret, cfg.public_url), policy, limiter, metrics)
    if store.rebuilt:
        Refill(ctx, service).start()
    root = FileResource(service.catalog, policy, limiter, metrics, service.fetched, ctx.reactor,
                        service.health, service.gauges)
    try:
        port = listen(ctx.reactor, make_site(root, cfg.http_head_timeout), cfg.http_port, cfg.http_bind, cfg.tls_cert, cfg.tls_key)
    except Exception:
        store.close()
        raise
    service.start()
    scheme = "https" if cfg.tls_cert else "http"
    log.info("serving {scheme} on {bind}:{port}; phones are told {url}", scheme=scheme,
             bind=cfg.http_bind, port=port.getHost().port, url=cfg.public_url)
    if scheme != urlsplit(cfg.public_url).scheme:
        log.warn("PNP_PUBLIC_URL {url} is not {scheme}: phones will be told the wrong scheme",
                 url=cfg.public_url, scheme=scheme)
    return Fileserver(service, port, store)
