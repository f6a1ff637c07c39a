"""The HTTP side (Twisted web): one leaf resource that answers every path.

Everything a request needs is precomputed (body, sha256, header values) and found with dict
look-ups; what happened is handed to ``on_fetch`` for the MQTT side. Two kinds of URL serve a
device's files: the bootstrap URL (secret path, or a plain path) while the device is enrolling,
and the credentialed one (``c/{name}``) for the device's own Digest credentials; who may have
what is the :class:`~fileserver.gate.Gate`'s decision.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.logger import Logger
from twisted.web import resource, server

from fileserver import paths
from fileserver.abuse import NotFoundLimiter, user_agent_mac
from fileserver.auth import Authenticator, DeviceDigest
from fileserver.catalog import Catalog
from fileserver.channel import FileSite, answer
from fileserver.enrolment import Enrolments
from fileserver.etag import none_match
from fileserver.files import DeviceFiles, ServedFile
from fileserver.gate import Gate
from fileserver.metrics import Metrics
from fileserver.provision import ProvisionTracker

log = Logger(namespace="fileserver")

# device, file, status, client, User-Agent, and the kind of URL: "bootstrap" or "device"
FetchCallback = Callable[[DeviceFiles, ServedFile, int, str, str, str], Any]


@dataclass
class Policy:
    prefix: str = "/"  # the path of PNP_PUBLIC_URL
    plain_paths: bool = False
    auth: Authenticator | None = None  # PNP_HTTP_AUTH: one login for every bootstrap download
    trusted_proxies: tuple = ()
    # who may download what; the default lets nothing through a bootstrap URL
    gate: Gate = field(default_factory=lambda: Gate(Enrolments(0.0), ProvisionTracker(), True))
    digest: DeviceDigest = field(default_factory=DeviceDigest)


_GET, _HEAD = b"GET", b"HEAD"
_PLAIN = b"text/plain; charset=utf-8"


class FileResource(resource.Resource):
    isLeaf = True

    def __init__(self, catalog: Catalog, policy: Policy, limiter: NotFoundLimiter, metrics: Metrics,
                 on_fetch: FetchCallback, clock: Any, health: Callable[[], dict],
                 gauges: Callable[[], Mapping[str, tuple[str, float]]]) -> None:
        super().__init__()
        self.catalog = catalog
        self.policy = policy
        self.limiter = limiter
        self.metrics = metrics
        self.on_fetch = on_fetch
        self.clock = clock
        self.health = health
        self.gauges = gauges

    # --- the request path ---
    def render(self, request: server.Request) -> bytes:
        # Twisted's default names its version; an attacker gains nothing from ours.
        request.setHeader(b"server", b"pnp")
        now = self.clock.seconds()
        client = self.client_address(request)
        # A ban is on an address, and a NAT puts real phones behind the walker's: what only a
        # phone or an operator can ask (its own secret path, valid credentials, health from
        # here or our proxies) is answered anyway; everything else waits out the ban.
        wait = self.limiter.refused(client, now)
        try:
            route = paths.route(request.uri, self.policy.prefix)
        except paths.BadPath:
            return self._refuse(request, wait) if wait else self._error(request, 400, b"bad request path\n")
        method = request.method
        if method != _GET and method != _HEAD:
            if wait:
                return self._refuse(request, wait)
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, 405, b"only GET and HEAD\n")
        kind = route.kind
        if kind == "credentialed":
            return self._credentialed(request, route, client, now, wait)
        if kind == "device" or (kind == "plain" and self.policy.plain_paths):
            return self._file(request, route, client, now, wait)
        if wait and not (kind in ("health", "metrics") and self._ours(request)):
            return self._refuse(request, wait)
        if kind == "health":
            health = self.health()
            return self._small(request, 200 if health.get("status") == "ok" else 503,
                               b"application/json", json.dumps(health, sort_keys=True).encode() + b"\n")
        if kind == "metrics":
            return self._small(request, 200, b"text/plain; version=0.0.4; charset=utf-8",
                               self.metrics.render(self.gauges()))
        return self._not_found(request, client, now)

    def _file(self, request: server.Request, route: paths.Route, client: str, now: float,
              wait: float) -> Any:
        policy = self.policy
        raw_ua = request.getHeader(b"user-agent")
        ua = raw_ua.decode("utf-8", "replace") if raw_ua else ""
        authenticated = False
        if policy.auth is not None:
            authorization = request.requestHeaders.getRawHeaders(b"authorization")
            header = authorization[0] if authorization else None
            authenticated = policy.auth.check(header, request.method, request.uri, client)
            if not authenticated:
                if header is not None:
                    if wait:
                        return self._refuse(request, wait)
                    # wrong credentials count like misses: guessing them is guessing paths
                    self._miss(client, now)
                # a banned client gets the challenge too (it tells nothing): a phone behind
                # the walker's NAT asks without credentials first
                request.setHeader(b"www-authenticate", policy.auth.challenge(client).encode("utf-8"))
                return self._error(request, 401, b"credentials required\n")
        device, served = self._find(route, ua)
        ua_mac = user_agent_mac(ua) if ua and served is not None else None
        refusal = policy.gate.bootstrap(device, client, now) if served is not None else None
        if wait and not authenticated and not (
                route.kind == "device" and served is not None and ua_mac in (None, device.mac)
                and refusal is None):
            # a plain path is no proof: it names a MAC, which is what a walker guesses; nor is
            # the path of a device that is not enrolling (no phone of ours is told it)
            return self._refuse(request, wait)
        if served is None:
            return self._not_found(request, client, now)
        if ua_mac is not None and ua_mac != device.mac:
            self._miss(client, now)
            return self._error(request, 403, b"this file belongs to another device\n")
        if refusal is not None:
            if route.kind == "plain":
                self._miss(client, now)  # it names a MAC: a guess that hit counts as one
            return self._error(request, 403, refusal.encode() + b"\n")
        return self._send(request, device, served, client, ua, "bootstrap")

    def _credentialed(self, request: server.Request, route: paths.Route, client: str, now: float,
                      wait: float) -> Any:
        """``c/{name}`` with the device's own Digest credentials: user its MAC, its password."""
        digest = self.policy.digest
        authorization = request.requestHeaders.getRawHeaders(b"authorization")
        if not authorization:
            # what every phone sends first; a banned address gets it too (it tells nothing)
            request.setHeader(b"www-authenticate", digest.challenge(client).encode("utf-8"))
            return self._error(request, 401, b"credentials required\n")
        creds = digest.credentials(authorization[0], request.method, request.uri, client)
        device = self.catalog.devices.get(digest.user(creds)) if creds is not None else None
        if device is None or not digest.proves(creds, self.policy.gate.passwords(device)):
            if wait:
                return self._refuse(request, wait)
            self._miss(client, now)  # guessing credentials is guessing paths
            request.setHeader(b"www-authenticate", digest.challenge(client).encode("utf-8"))
            return self._error(request, 401, b"credentials required\n")
        served = device.files.get(route.name)
        if served is None:
            # valid credentials are never banned: a phone asking for a file it lacks is no walker
            return self._error(request, 404, b"not one of this device's files\n")
        raw_ua = request.getHeader(b"user-agent")
        return self._send(request, device, served, client,
                          raw_ua.decode("utf-8", "replace") if raw_ua else "", "device")

    def _send(self, request: server.Request, device: DeviceFiles, served: ServedFile, client: str,
              ua: str, auth: str) -> Any:
        inm = request.requestHeaders.getRawHeaders(b"if-none-match")
        get = request.method == _GET
        # Written here rather than returned: Twisted would add "Content-Length: 0" to a 304
        # (RFC 9110 forbids a length other than the 200's) and log a warning on every HEAD.
        if inm and none_match([v.decode("latin-1") for v in inm], served.sha256):
            self.metrics.observe(304, 0)
            answer(request, 304, _headers_304(served), served.head_304, b"")
            if get:
                self.on_fetch(device, served, 304, client, ua, auth)
            return server.NOT_DONE_YET
        self.metrics.observe(200, len(served.body) if get else 0)
        answer(request, 200, served.headers + ((b"Content-Length", served.length),), served.head,
               served.body)
        if get:
            self.on_fetch(device, served, 200, client, ua, auth)
        return server.NOT_DONE_YET

    def _find(self, route: paths.Route, ua: str) -> tuple[Any, ServedFile | None]:
        if route.kind == "device":
            device = self.catalog.by_token(route.token)
            if device is None:
                return None, None
            return device, device.files.get(route.name)
        candidates = self.catalog.by_name(route.name)
        if len(candidates) > 1:
            # a name several devices share: only a User-Agent naming one of them decides
            mac = user_agent_mac(ua) if ua else None
            candidates = [d for d in candidates if d.mac == mac]
        if len(candidates) != 1:
            return None, None
        return candidates[0], candidates[0].files[route.name]

    # --- helpers ---
    def client_address(self, request: server.Request) -> str:
        host = getattr(request.getClientAddress(), "host", "") or ""
        if not self.policy.trusted_proxies:
            return host
        # Walk X-Forwarded-For from the right, past our own proxies, to the first stranger.
        forwarded = []
        for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []:
            text = value.decode("latin-1")
            forwarded += [v.strip() for v in text.split(",") if v.strip()]
        for candidate in reversed(forwarded + [host]):
            try:
                addr = ipaddress.ip_address(candidate)
            except ValueError:
                return candidate
            if not any(addr in net for net in self.policy.trusted_proxies):
                return candidate
        return forwarded[0] if forwarded else host

    def _ours(self, request: server.Request) -> bool:
        """The connection comes from this host or one of our trusted proxies (a healthcheck,
        the metrics scraper): never banned, whoever else shares the address outside."""
        try:
            peer = ipaddress.ip_address(getattr(request.getClientAddress(), "host", "") or "")
        except ValueError:
            return False
        return peer.is_loopback or any(peer in net for net in self.policy.trusted_proxies)

    def _refuse(self, request: server.Request, wait: float) -> bytes:
        request.setHeader(b"retry-after", b"%d" % (int(wait) + 1))
        return self._error(request, 429, b"too many requests for files that do not exist\n")

    def _miss(self, client: str, now: float) -> None:
        if self.limiter.not_found(client, now):
            log.warn("refusing {client} for {seconds:.0f}s: {limit} misses within {window:.0f}s "
                     "(MAC enumeration?)", client=client, seconds=self.limiter.ban,
                     limit=self.limiter.limit, window=self.limiter.window)

    def _not_found(self, request: server.Request, client: str, now: float) -> bytes:
        self._miss(client, now)
        return self._error(request, 404, b"not found\n")

    def _error(self, request: server.Request, status: int, body: bytes) -> bytes:
        return self._small(request, status, _PLAIN, body, no_store=True)

    def _small(self, request: server.Request, status: int, content_type: bytes, body: bytes,
               no_store: bool = True) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        if no_store:
            request.setHeader(b"cache-control", b"no-store")
        self.metrics.observe(status, 0)
        if request.method == _HEAD:
            # the length a GET would get, and no body (Twisted warns about a HEAD body)
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


def _headers_304(served: ServedFile) -> tuple[tuple[bytes, bytes], ...]:
    # a 304 describes no body: no Content-Type, no Repr-Digest (only when not answered at once)
    return tuple(h for h in served.headers[1:] if h[0] != b"Repr-Digest")


def make_site(root: FileResource, head_timeout: float = 10.0, timeout: float = 30.0) -> server.Site:
    """The site phones talk to; ``head_timeout`` bounds how long a request head may take."""
    site = FileSite(root, head_timeout, lambda status: root.metrics.observe(status, 0), timeout=timeout)
    site.displayTracebacks = False
    site.noisy = False
    return site
