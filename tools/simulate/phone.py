"""One simulated phone's Plug and Play firmware, as a sans-I/O state machine.

The phone knows nothing of sockets, HTTP clients or reactors. A driver feeds it the time and what
happened (``boot``, ``receive`` a datagram, ``tick`` when its ``deadline`` has come, the result of
an HTTP request), and each call returns the :class:`Send` and :class:`Fetch` actions to carry out.
So every rule of the guide is testable with plain values:

- at boot, SUBSCRIBE to 224.0.1.75 in the vendor's shape, up to 5 times (T1 doubling between
  attempts, as a SIP stack would space them); stop on 2xx or 500, ignore 3xx/4xx and other codes;
- answer a NOTIFY 200 only when it carries ``application/url`` and a URL, 4xx otherwise; the
  response goes where RFC 3261 §18.2.2 / RFC 3581 say (source IP; source port with ``rport``,
  else the Via's port);
- fetch the file(s) with the vendor's User-Agent and check ``Repr-Digest``/``ETag`` against the
  body's sha256; read each file the way the vendor's firmware does (``vendors.check_file``: a GRP
  refuses a P-value its template does not have, a Yealink a common file named for another model,
  a snom a ``setting_server`` that is a directory) and fail at step ``apply`` when it would not
  take it; "reboot"; fetch again expecting the same sha256 or a 304: then provisioned. The
  second ("reboot") download goes where the files said (``vendors.config_server``: the vendor's
  config server and HTTP user/password settings), answering the server's Digest challenge with
  those credentials, as the firmware would; files that name no server are fetched again from the
  NOTIFY's URL;
- once provisioned, a ``check-sync`` NOTIFY (resync) is answered 200 and the phone goes through
  download (from its config server, with the credentials it holds), reboot (with those of the
  new file: a rotated password) and check again. With ``notify_auth`` it first challenges the NOTIFY, as a
  factory Grandstream does ("Disable SIP NOTIFY Authentication", P4428, is 0 by default): a 401
  with a Digest challenge (MD5, qop=auth), then 200 only for an answer made with its SIP
  account's authentication name and password, 401 again for any other. A Grandstream phone
  learns ``notify_auth`` from the file it fetched (P36, else P35, and P34; none if P4428 is 1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote, urlsplit, urlunsplit

from services.sip import digest, reply_address
from services.sip import message as sip
from tools.simulate.vendors import (
    GROUP, Dialog, FileRefused, Identity, ServerLogin, check_file, config_server, file_names, new_dialog,
    read_file,
)


class State(str, Enum):
    IDLE = "idle"
    SUBSCRIBING = "subscribing"
    WAITING_NOTIFY = "waiting-notify"
    FETCHING = "fetching"
    REBOOTING = "rebooting"
    REFETCHING = "refetching"
    PROVISIONED = "provisioned"
    FAILED = "failed"


# The step a phone failed at, by the state it was in.
STEP = {
    State.IDLE: "boot",
    State.SUBSCRIBING: "subscribe",
    State.WAITING_NOTIFY: "notify",
    State.FETCHING: "fetch",
    State.REBOOTING: "reboot",
    State.REFETCHING: "refetch",
}


@dataclass(frozen=True)
class Send:
    """Send ``data`` in one UDP datagram to ``addr`` from the phone's own socket."""

    data: bytes
    addr: tuple[str, int]


@dataclass(frozen=True)
class Fetch:
    """GET ``url`` with ``headers`` over a new connection from the phone's address; feed the
    outcome back with :meth:`Phone.http_response` or :meth:`Phone.http_error`."""

    url: str
    headers: dict[str, str]


Action = Send | Fetch


@dataclass(frozen=True)
class Timing:
    """How long a phone's firmware waits, in seconds."""

    attempts: int = 5
    t1: float = 0.5  # first SUBSCRIBE retry interval, doubled each time
    notify_timeout: float = 30.0  # wait for the NOTIFY after the answer (or the last attempt)
    reboot_delay: float = 0.2
    fetch_retries: int = 2  # after a connection failure, timeout or 5xx, as firmware retries
    fetch_retry_delay: float = 2.0  # doubled each time
    # Each phone's timers run on its own clock: a wait is stretched or shrunk by up to this
    # fraction, so phones booted together do not retransmit in lockstep for ever.
    jitter: float = 0.1


@dataclass
class Times:
    """When things happened (the driver's clock, seconds); None until they do."""

    boot: float | None = None
    subscribe: float | None = None  # first SUBSCRIBE sent
    answer: float | None = None  # first 2xx to a SUBSCRIBE
    notify: float | None = None  # first NOTIFY carrying a URL
    file: float | None = None  # first file received (200, checked)
    provisioned: float | None = None
    resynced: float | None = None  # provisioned again after the last check-sync

    def span(self, start: str, end: str) -> float | None:
        a, b = getattr(self, start), getattr(self, end)
        return None if a is None or b is None else b - a


_CT_URL = "application/url"


class Phone:
    def __init__(self, ident: Identity, target_port: int, timing: Timing | None = None,
                 rng: random.Random | None = None, group: str = GROUP,
                 credentials: tuple[str, str] | None = None, *,
                 notify_auth: tuple[str, str] | None = None, check_files: bool = True) -> None:
        self.ident = ident
        self.check_files = check_files
        self.applied: dict[str, list[tuple[str, str]]] = {}  # file name -> the settings it applied
        self.vendor = ident.vendor
        self.target = (group, target_port)
        self.timing = timing or Timing()
        self.rng = rng or random.Random()
        self.state = State.IDLE
        self.deadline: float | None = None
        self.times = Times()
        self.step: str | None = None  # where it failed
        self.reason: str | None = None
        self.attempts = 0
        self.answers: list[int] = []  # every final status code to our SUBSCRIBEs
        self.notify_url: str | None = None
        self.notify_in_dialog: bool | None = None
        self.notifies = 0  # NOTIFY requests received (retransmissions included)
        self.rejected_notifies = 0
        self.garbage = 0  # datagrams that were not SIP
        self.resyncs = 0  # check-sync NOTIFYs received
        self.fetches: list[tuple[str, int]] = []  # (url, status) of every response
        self._dialog: Dialog | None = None
        self._sent_cseqs: set[int] = set()
        self._answered: dict[tuple[str, str], bytes] = {}  # NOTIFY (call-id, cseq) -> response
        self._urls: list[str] = []
        self._next = 0  # index into _urls of the file being fetched
        # file name -> (sha256, etag): by name, as the reboot fetch may come from another server
        self._checked: dict[str, tuple[str, str | None]] = {}
        self._settings: dict[str, list[tuple[str, str]]] = {}  # file name -> its settings, this download
        # for a 401; the NOTIFY URL's user:password wins, then those the files give for their server
        self.credentials = credentials
        self.server: ServerLogin | None = None  # the config server the files named, once read
        self._authorization: str | None = None  # answer to the current file's challenge
        self._retries = 0  # of the current file
        self.fetch_errors: list[str] = []  # every connection failure, retried or not
        # (auth id, password) of its SIP account: challenge check-sync NOTIFYs with it
        self.notify_auth = notify_auth
        # a GRP takes it from its file, unless the test gave it one
        self.learns_notify_auth = notify_auth is None and ident.vendor.name == "grandstream"
        self.notify_realm = "pnp-sim"
        self._nonce: str | None = None  # of the last challenge; each one answers once
        self.challenges = 0  # 401s sent to check-sync NOTIFYs
        self.auth_failures = 0  # answers to a challenge that did not match the account

    # --- properties ---
    @property
    def done(self) -> bool:
        return self.state in (State.PROVISIONED, State.FAILED)

    @property
    def mac(self) -> str:
        return self.ident.mac

    # --- inputs ---
    def boot(self, now: float) -> list[Action]:
        self.times.boot = now
        self._dialog = new_dialog(self.vendor, self.ident, self.rng)
        self.state = State.SUBSCRIBING
        return self._subscribe(now)

    def tick(self, now: float) -> list[Action]:
        """Call when ``now >= deadline``."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if self.state == State.SUBSCRIBING:
            if self.attempts < self.timing.attempts:
                return self._subscribe(now)
            codes = f" (answers: {', '.join(map(str, self.answers))})" if self.answers else ""
            self._fail(now, "subscribe", f"no 2xx to {self.attempts} SUBSCRIBEs and no NOTIFY{codes}")
            return []
        if self.state == State.WAITING_NOTIFY:
            self._fail(now, "notify", f"no NOTIFY within {self.timing.notify_timeout:g}s of the answer")
            return []
        if self.state == State.REBOOTING:
            self.state = State.REFETCHING
            self._next = 0
            return [self._fetch()]
        if self.state in (State.FETCHING, State.REFETCHING):  # a retry is due
            return [self._fetch()]
        return []

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> list[Action]:
        try:
            msg = sip.parse(data)
        except sip.SipParseError:
            self.garbage += 1
            return []
        if isinstance(msg, sip.Response):
            self._response(msg, now)
            return []
        return self._request(msg, source, now)

    def http_response(self, status: int, headers: dict[str, str], body: bytes, now: float) -> list[Action]:
        """The answer to the last :class:`Fetch`; ``headers`` keys are lower case."""
        if self.state not in (State.FETCHING, State.REFETCHING):
            return []
        url = self._urls[self._next]
        self.fetches.append((url, status))
        name = url.rsplit("/", 1)[-1]
        again = self.state == State.REFETCHING
        if status == 401 and self.credentials and self._authorization is None:
            answer = authorization(headers.get("www-authenticate", ""), url, *self.credentials,
                                   cnonce=f"{self.rng.getrandbits(64):016x}")
            if answer is not None:
                self._authorization = answer
                return [self._fetch()]
        self._authorization = None
        if status >= 500 and self._retry(now):
            return []
        if status == 304 and again and name in self._checked:
            return self._file_ok(now)
        if status != 200:
            tries = f" (after {self._retries} retries)" if self._retries else ""
            self._fail(now, self.state_step, f"GET {name}: HTTP {status}{tries}")
            return []
        digest = hashlib.sha256(body).hexdigest()
        problem = check_digests(headers, digest)
        if problem:
            self._fail(now, "verify", f"{name}: {problem}")
            return []
        if again and name in self._checked:
            before = self._checked[name][0]
            if before != digest:
                self._fail(now, "refetch", f"{name}: sha256 changed after reboot ({before} -> {digest})")
                return []
        else:
            # A first download; or, after the reboot, a file the NOTIFY's URL did not name (a
            # Yealink's common file, once its config server is a directory): applied as new.
            try:
                if self.check_files:
                    self.applied[name] = pairs = check_file(self.vendor, self.ident.model, self.mac, name, body)
                else:
                    pairs = read_file(self.vendor, self.ident.model, self.mac, name, body)
            except FileRefused as exc:
                if self.check_files:
                    self._fail(now, "apply", f"{name}: {exc}")
                    return []
                pairs = []
            self._settings[name] = pairs
            self._checked[name] = (digest, headers.get("etag"))
            if self.times.file is None:
                self.times.file = now
            if self.learns_notify_auth:
                # From the settings just read: a second parse of the file cost a GRP more CPU
                # than the rest of its download (a storm's simulator shares the PBX's CPU).
                self.notify_auth = (notify_auth_of(pairs) if pairs
                                    else grandstream_notify_auth(body))
        return self._file_ok(now)

    def http_error(self, reason: str, now: float) -> list[Action]:
        if self.state in (State.FETCHING, State.REFETCHING):
            self.fetch_errors.append(reason)
            if self._retry(now):
                return []
            name = self._urls[self._next].rsplit("/", 1)[-1]
            tries = f" (after {self._retries} retries)" if self._retries else ""
            self._fail(now, self.state_step, f"GET {name}: {reason}{tries}")
        return []

    def _retry(self, now: float) -> bool:
        """Schedule the same GET again, if retries are left for this file."""
        if self._retries >= self.timing.fetch_retries:
            return False
        self.deadline = now + self._jittered(self.timing.fetch_retry_delay * (2 ** self._retries))
        self._retries += 1
        return True

    def fail(self, now: float, step: str, reason: str) -> None:
        """The driver gives up on the phone (socket trouble, the run's time limit)."""
        if not self.done:
            self._fail(now, step, reason)

    def give_up(self, now: float) -> None:
        if not self.done:
            self._fail(now, self.state_step, f"still {self.state.value} when the run ended")

    @property
    def state_step(self) -> str:
        return STEP.get(self.state, self.state.value)

    # --- SUBSCRIBE ---
    def _subscribe(self, now: float) -> list[Action]:
        assert self._dialog is not None
        branch = "z9hG4bK" + str(self.rng.randrange(10 ** 9, 10 ** 10))
        request = self.vendor.subscribe(self.ident, self._dialog, self.attempts, branch)
        self._sent_cseqs.add(self._dialog.first_cseq + self.attempts)
        if self.times.subscribe is None:
            self.times.subscribe = now
        self.attempts += 1
        if self.attempts < self.timing.attempts:
            self.deadline = now + self._jittered(self.timing.t1 * (2 ** (self.attempts - 1)))
        else:
            # The last one: a NOTIFY may still come for a SUBSCRIBE whose answer was lost.
            self.deadline = now + self.timing.notify_timeout
        return [Send(request.to_bytes(), self.target)]

    def _jittered(self, wait: float) -> float:
        j = self.timing.jitter
        return wait * (1 + self.rng.uniform(-j, j)) if j > 0 else wait

    def _response(self, msg: sip.Response, now: float) -> None:
        if self._dialog is None or msg.call_id != self._dialog.call_id:
            return
        try:
            number, method = msg.cseq
        except sip.SipParseError:
            return
        if method != "SUBSCRIBE" or number not in self._sent_cseqs or msg.status < 200:
            return
        self.answers.append(msg.status)
        if 200 <= msg.status < 300 and self.times.answer is None:
            self.times.answer = now  # even when the NOTIFY overtook it
        if self.state != State.SUBSCRIBING:
            return
        if 200 <= msg.status < 300:
            self.state = State.WAITING_NOTIFY
            self.deadline = now + self.timing.notify_timeout
        elif msg.status == 500:
            self._fail(now, "subscribe", f"500 {msg.reason}".strip())
        # 3xx, 4xx and the rest: ignored, the next attempt goes out on time (the guide).

    # --- NOTIFY ---
    def _request(self, req: sip.Request, source: tuple[str, int], now: float) -> list[Action]:
        key = (req.call_id or "", req.headers.get("cseq") or "")
        if key in self._answered:  # a retransmission: same answer again
            return [Send(self._answered[key], self._reply_address(req, source))]
        accepted = False
        extra: list[tuple[str, str]] = []
        if req.method != "NOTIFY":
            status, reason = 501, "Not Implemented"
        elif _event(req) == "check-sync" and self.notify_auth and not self._authorized(req):
            status, reason = 401, "Unauthorized"
            self._nonce = f"{self.rng.getrandbits(96):024x}"
            self.challenges += 1
            extra.append(("WWW-Authenticate", f'Digest realm="{self.notify_realm}", '
                          f'nonce="{self._nonce}", qop="auth", algorithm=MD5'))
        elif _event(req) == "check-sync":
            # A resync: fetch the configuration again from where it came, flash what changed.
            status, reason = 200, "OK"
            self.resyncs += 1
            if self.state == State.PROVISIONED and self._urls:
                self.state = State.FETCHING
                self._next = 0
                self._checked.clear()
                self._settings.clear()
                accepted = True
        else:
            self.notifies += 1
            status, reason, url = self._judge_notify(req)
            if url is not None and self.state in (State.SUBSCRIBING, State.WAITING_NOTIFY):
                self._accept(req, url, now)
                accepted = True
        if status >= 300 and req.method == "NOTIFY":
            self.rejected_notifies += 1
        to_tag = None
        try:
            if sip.parse_name_addr(req.headers.get("to") or "").tag is None:
                to_tag = (self._dialog.from_tag if self._dialog else None) or sip.new_tag()
            response = sip.build_response(req, status, reason, to_tag=to_tag, received=source,
                                          headers=extra)
        except sip.SipParseError:
            self.garbage += 1
            return []
        data = response.to_bytes()
        self._answered[key] = data
        actions: list[Action] = [Send(data, self._reply_address(req, source))]
        if accepted:  # answer first, then fetch: the order a phone's log shows
            actions.append(self._fetch())
        return actions

    def _authorized(self, req: sip.Request) -> bool:
        """Whether ``req`` answers our last challenge with the account's credentials."""
        nonce, self._nonce = self._nonce, None  # one answer per challenge
        value = req.headers.get("authorization")
        if nonce is None or not value or self.notify_auth is None:
            return False
        user, password = self.notify_auth
        try:
            scheme, f = digest.parse_fields(value)
            nc = int(f.get("nc", "0"), 16)
        except (digest.DigestError, ValueError):
            self.auth_failures += 1
            return False
        challenge = digest.Challenge(realm=self.notify_realm, nonce=nonce, qop=("auth",))
        expected = digest.digest_response(challenge, user, password, req.method, req.uri,
                                          f.get("cnonce", ""), nc)
        ok = (scheme.lower() == "digest" and f.get("nonce") == nonce and f.get("username") == user
              and f.get("uri") == req.uri and f.get("qop") == "auth"
              and hmac.compare_digest(expected, f.get("response", "")))
        self.auth_failures += not ok
        return ok

    def _judge_notify(self, req: sip.Request) -> tuple[int, str, str | None]:
        ctype = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != _CT_URL:
            return 415, "Unsupported Media Type", None
        try:
            text = req.body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return 400, "Bad Request", None
        if not is_url(text):
            return 400, "Bad Request", None
        return 200, "OK", text

    def _accept(self, req: sip.Request, url: str, now: float) -> None:
        self.times.notify = now
        self.notify_url = url
        parts = urlsplit(url)
        if parts.username is not None:
            # http://user:pass@host/...: the credentials for the challenge, not for the URL.
            self.credentials = (unquote(parts.username), unquote(parts.password or ""))
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
        self.notify_in_dialog = bool(self._dialog and req.call_id == self._dialog.call_id)
        self._urls = (
            [url + name for name in file_names(self.vendor, self.mac, self.ident.model)]
            if url.endswith("/") else [url]
        )
        self._next = 0
        self._settings.clear()
        self.state = State.FETCHING
        self.deadline = None

    def _follow_server(self) -> None:
        """After a download, before the reboot: take the config server and credentials the
        files set (the files' order: a later file wins), as the firmware stores them."""
        pairs = [pair for name in self._settings for pair in self._settings[name]]
        login = config_server(self.vendor, self.ident.model, self.mac, pairs)
        if login is None:
            return
        self.server = login
        self._urls = list(login.urls)
        self.credentials = (login.user, login.password)

    @staticmethod
    def _reply_address(req: sip.Request, source: tuple[str, int]) -> tuple[str, int]:
        try:
            via = sip.parse_via(req.headers.get_all("via")[0])
        except (IndexError, sip.SipParseError):
            return source
        return reply_address(via, source)

    # --- files ---
    def _fetch(self) -> Fetch:
        url = self._urls[self._next]
        headers = {"User-Agent": self.vendor.user_agent(self.ident), "Accept": "*/*"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        if self.state == State.REFETCHING:
            etag = self._checked.get(url.rsplit("/", 1)[-1], (None, None))[1]
            if etag:
                headers["If-None-Match"] = etag
        return Fetch(url, headers)

    def _file_ok(self, now: float) -> list[Action]:
        self._next += 1
        self._retries = 0
        if self._next < len(self._urls):
            return [self._fetch()]
        if self.state == State.FETCHING:
            self._follow_server()
            self.state = State.REBOOTING
            self.deadline = now + self.timing.reboot_delay
            return []
        self.state = State.PROVISIONED
        if self.times.provisioned is None:
            self.times.provisioned = now
        else:
            self.times.resynced = now
        self.deadline = None
        return []

    def _fail(self, now: float, step: str, reason: str) -> None:
        self.state = State.FAILED
        self.step = step
        self.reason = reason
        self.deadline = None


def authorization(challenge: str, url: str, user: str, password: str, cnonce: str = "0a4f113b") -> str | None:
    """The Authorization value answering a WWW-Authenticate ``challenge`` (Basic, or Digest as
    services.sip.digest speaks it, RFC 7616) for a GET of ``url``; None for one we cannot answer."""
    scheme = challenge.strip().partition(" ")[0]
    if scheme.lower() == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        parsed = digest.parse_challenge(challenge)
        parts = urlsplit(url)
        uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return digest.authorization(parsed, user, password, "GET", uri, cnonce)
    except digest.DigestError:
        return None


def grandstream_notify_auth(body: bytes) -> tuple[str, str] | None:
    """What a GRP checks a challenged NOTIFY against, from its ``<gs_provision>`` file: account
    1's Authenticate ID (P36, else the SIP User ID P35) and password (P34); None when the file
    turns the challenge off (P4428 = 1), names no account, or is not such a file."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    return notify_auth_of([(el.tag, el.text or "") for el in root.iter()])


_NOTIFY_AUTH = frozenset(("P34", "P35", "P36", "P4428"))


def notify_auth_of(pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    """:func:`grandstream_notify_auth` from the (setting, value) pairs a GRP applied."""
    values = {k: v.strip() for k, v in pairs if k in _NOTIFY_AUTH}
    user = values.get("P36") or values.get("P35")
    if values.get("P4428") == "1" or not user:
        return None
    return user, values.get("P34", "")


def _event(req: sip.Request) -> str:
    try:
        return sip.parse_value(req.headers.get("event") or "")[0].strip().lower()
    except sip.SipParseError:
        return ""


def is_url(text: str) -> bool:
    if not text or any(c.isspace() for c in text) or len(text) > 2048:
        return False
    try:
        parts = urlsplit(text)
        parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_REPR_DIGEST = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]*):", re.I)


def check_digests(headers: dict[str, str], digest: str) -> str | None:
    """What is wrong with the response's checksum headers for a body of sha256 ``digest``, or
    None when they agree (and at least one is present)."""
    etag = headers.get("etag")
    rd = headers.get("repr-digest")
    if etag is None and rd is None:
        return "no ETag or Repr-Digest to check the file against"
    if etag is not None:
        tag = etag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tag = tag.strip('"').lower()
        if tag != digest:
            return f"ETag {etag} is not the body's sha256 {digest}"
    if rd is not None:
        m = _REPR_DIGEST.search(rd)
        if not m:
            return f"Repr-Digest {rd!r} has no sha-256"
        try:
            given = base64.b64decode(m.group(1), validate=True).hex()
        except ValueError:
            return f"Repr-Digest {rd!r} is not base64"
        if given != digest:
            return f"Repr-Digest sha-256 {given} is not the body's sha256 {digest}"
    return None
