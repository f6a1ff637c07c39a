"""The console's web side: pages (Jinja2), forms, the event stream; a thin Twisted resource.

Every page needs a session but /login and /static/; every POST needs the session's CSRF token
(the login form a token of its own, in a cookie). Viewers read; only admins change anything.
What a viewer is sent never holds a password or a working download URL.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from console import forms
from console.redact import MASK, cut_urls, mask, secrets_in
from console.service import ConsoleService, NotConnected
from console.sessions import Session, Sessions, check_csrf
from console.table import STAGES, DeviceTable, Filter, stage_label
from console.users import DUMMY_HASH, User, verify_password
from generator import schema
from tools.assign import Item, Refused, read_csv, read_json, vet
from tools.commands import Order, when
from services.messages import HttpAuth
from services.topics import is_mac

log = Logger(namespace="console")

HERE = Path(__file__).parent
COOKIE = b"pnp_console"
LOGIN_COOKIE = b"pnp_console_login"
MAX_BODY = 4 * 1024 * 1024
KEEPALIVE_EVERY = 15.0
STATIC = {"console.css": b"text/css; charset=utf-8", "console.js": b"text/javascript; charset=utf-8"}
HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                b"form-action 'self'; base-uri 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Cache-Control": b"no-store",
}


class Page(Exception):
    """Stop handling and answer with this status and template."""

    def __init__(self, code: int, template: str, **context: Any) -> None:
        super().__init__(code)
        self.code = code
        self.template = template
        self.context = context


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True)
class Assets:
    """What the pages are made of, read once at start."""

    env: Environment
    static: dict[str, bytes]
    schema_json: bytes


def load_assets() -> Assets:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(stage_label=stage_label, STAGES=STAGES, MASK=MASK)
    return Assets(env, {name: (HERE / "static" / name).read_bytes() for name in STATIC},
                  schema.SCHEMA_PATH.read_bytes())


class Console(resource.Resource):
    isLeaf = True

    def __init__(self, table: DeviceTable, service: ConsoleService, users: dict[str, User],
                 sessions: Sessions, assets: Assets, reactor: Any, secure: bool) -> None:
        super().__init__()
        self.table = table
        self.service = service
        self.users = users
        self.sessions = sessions
        self.env = assets.env
        self.static = assets.static
        self.schema_json = assets.schema_json
        self.reactor = reactor
        self.secure = secure
        self._rows: dict[tuple[str, bool], tuple[Any, int, str]] = {}
        self._keepalive: Any = None

    def start(self) -> None:
        self._keepalive = task.LoopingCall(self.service.hub.keepalive)
        self._keepalive.clock = self.reactor
        self._keepalive.start(KEEPALIVE_EVERY, now=False)

    def stop(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()

    # --- dispatch ---
    def render(self, request: server.Request) -> Any:
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        try:
            return self._route(request)
        except Page as page:
            return self._page(request, page)
        except Redirect as r:
            return self._redirect(request, r.location)

    def _route(self, request: server.Request) -> Any:
        method = request.method.decode()
        path = request.path.decode("utf-8", "replace")
        parts = [unquote(p) for p in path.split("/") if p]
        if method not in ("GET", "HEAD", "POST"):
            raise Page(405, "error.html", message="method not allowed")
        if parts[:1] == ["static"] and len(parts) == 2 and parts[1] in STATIC:
            request.setHeader(b"Content-Type", STATIC[parts[1]])
            request.setHeader(b"Cache-Control", b"no-cache")
            return self.static[parts[1]]
        if parts == ["favicon.ico"]:
            request.setResponseCode(204)
            return b""
        if parts == ["login"]:
            return self.login_post(request) if method == "POST" else self.login_page(request)
        session = self.sessions.get(self._cookie(request, COOKIE), self.reactor.seconds())
        if session is None:
            if parts == ["events"]:
                raise Page(401, "error.html", message="log in first")
            raise Redirect("/login?" + urlencode({"next": path}))
        if method == "POST":
            if int(request.getHeader(b"content-length") or 0) > MAX_BODY:
                raise Page(413, "error.html", session=session, message="the upload is too large (4 MiB at most)")
            if not check_csrf(session, self._arg(request, "csrf")):
                raise Page(403, "error.html", session=session,
                           message="the form expired or came from another site; reload the page and try again")
            if parts == ["logout"]:
                self.sessions.end(session.token)
                self._set_cookie(request, COOKIE, b"", expire=True)
                raise Redirect("/login")
            if not session.admin:
                raise Page(403, "error.html", session=session, message="only admins may change anything")
        get = method in ("GET", "HEAD")
        if parts == [] and get:
            return self.devices_page(request, session)
        if parts == ["events"] and get:
            return self.events(request, session)
        if parts == ["schema.json"] and get:
            request.setHeader(b"Content-Type", b"application/schema+json")
            return self.schema_json
        if parts == ["services"] and get:
            return self.services_page(request, session)
        if parts == ["import"]:
            if not session.admin:
                raise Page(403, "error.html", session=session, message="only admins may import assignments")
            return self.import_post(request, session) if not get else self._render(request, "import.html", session)
        if parts[:1] == ["profiles"]:
            return self.profiles(request, session, parts[1:], get)
        if parts[:1] == ["devices"] and len(parts) >= 2:
            mac = parts[1]
            if not is_mac(mac) or mac not in self.table.devices:
                raise Page(404, "notfound.html", session=session, what=f"device {mac}")
            rest = parts[2:]
            if rest == [] and get:
                return self.device_page(request, session, mac)
            if rest == ["assign"] and not get:
                return self.assign_post(request, session, mac)
            if rest == ["unassign"] and not get:
                return self.publish_then(request, session, [Item("console", mac, None)], f"/devices/{mac}",
                                         "unassigned")
            if rest in (["rearm"], ["rotate"]) and not get:
                return self.command_post(request, session, Order.new(mac, rest[0]))
            if len(rest) == 2 and rest[0] == "files" and get:
                return self.file_page(request, session, mac, rest[1])
        raise Page(404, "notfound.html", session=session, what=path)

    # --- rendering ---
    def _render(self, request: server.Request, template: str, session: Session | None, code: int = 200,
                **context: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        context.setdefault("broker_connected", self.service.connected)
        return self.env.get_template(template).render(session=session, **context).encode()

    def _page(self, request: server.Request, page: Page) -> bytes:
        session = page.context.pop("session", None)
        return self._render(request, page.template, session, page.code, **page.context)

    def _redirect(self, request: server.Request, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode())
        return b""

    def _cookie(self, request: server.Request, name: bytes) -> str | None:
        value = request.getCookie(name)
        return value.decode("ascii", "replace") if value else None

    def _set_cookie(self, request: server.Request, name: bytes, value: bytes, expire: bool = False) -> None:
        request.addCookie(name, value, path=b"/", httpOnly=True, secure=self.secure, sameSite="strict",
                          max_age=b"0" if expire else None)

    @staticmethod
    def _arg(request: server.Request, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    @staticmethod
    def _fields(request: server.Request) -> list[tuple[str, str]]:
        return [(k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
                for k, vs in request.args.items() for v in vs]

    # --- login ---
    def login_page(self, request: server.Request, error: str = "", code: int = 200) -> bytes:
        # One token per browser, kept across loads: another tab (or the favicon's redirect) must
        # not invalidate the form already shown.
        token = self._cookie(request, LOGIN_COOKIE) or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", token):
            token = secrets.token_urlsafe(24)
        self._set_cookie(request, LOGIN_COOKIE, token.encode())
        nxt = self._arg(request, "next") or "/"
        return self._render(request, "login.html", None, code, login_csrf=token, next=_local(nxt), error=error,
                            no_users=not self.users)

    def login_post(self, request: server.Request) -> Any:
        cookie = self._cookie(request, LOGIN_COOKIE)
        token = self._arg(request, "csrf")
        if not cookie or not token or not secrets.compare_digest(cookie, token):
            return self.login_page(request, "the login form expired; try again", 403)
        name = self._arg(request, "username") or ""
        password = self._arg(request, "password") or ""
        client = request.getClientAddress().host
        now = self.reactor.seconds()
        if self.sessions.throttled(name, client, now):
            return self.login_page(request, "too many failed attempts; wait a few minutes", 429)
        user = self.users.get(name)
        # scrypt takes tens of milliseconds: off the reactor, and as long for unknown users.
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), verify_password, password,
                                      user.hashed if user else DUMMY_HASH)

        def checked(ok: bool) -> None:
            if ok and user is not None:
                self.sessions.succeeded(name, client)
                session = self.sessions.create(user.name, user.role, self.reactor.seconds())
                self._set_cookie(request, COOKIE, session.token.encode())
                self._set_cookie(request, LOGIN_COOKIE, b"", expire=True)
                log.info("{user} ({role}) logged in from {client}", user=user.name, role=user.role, client=client)
                body = self._redirect(request, _local(self._arg(request, "next") or "/"))
            else:
                self.sessions.failed(name, client, self.reactor.seconds())
                log.warn("failed login for {user!r} from {client}", user=name[:64], client=client)
                body = self.login_page(request, "wrong user name or password", 401)
            _finish(request, body)

        d.addCallback(checked)
        d.addErrback(_failed, request, "login")
        return server.NOT_DONE_YET

    # --- devices ---
    def row(self, mac: str, admin: bool) -> dict | None:
        d = self.table.device(mac)
        if d is None:
            return None
        detail = d.detail
        if d.stage == "error":
            detail = mask(detail, self._secrets(mac))
        if not admin:
            detail = cut_urls(detail)
        return {"mac": d.mac, "vendor": d.vendor, "model": d.model, "firmware": d.firmware, "ip": d.ip,
                "stage": d.stage, "label": stage_label(d.stage), "detail": detail, "updated_at": d.updated_at,
                "enrolment": d.enrolment, "enrolment_detail": d.enrolment_detail}

    def rows_for(self, macs: list[str], admin: bool) -> list[dict]:
        return [self.row(m, admin) or {"mac": m, "gone": True} for m in macs]

    def timeline_for(self, mac: str, count: int, admin: bool) -> list[dict]:
        events = self.table.timeline(mac)[-count:] if count else []
        return [self._event(mac, e, admin) for e in events]

    def _event(self, mac: str, e: Any, admin: bool) -> dict:
        text = mask(e.text, self._secrets(mac))
        return {"at": e.at, "kind": e.kind, "text": text if admin else cut_urls(text), "sha256": e.sha256,
                "retained": e.retained}

    def _secrets(self, mac: str) -> set[str]:
        assignment = self.table.payload(mac, "assignment")
        profile = assignment.get("profile") if isinstance(assignment, dict) else None
        found = secrets_in(assignment, self.table.profiles.get("default"),
                           self.table.profiles.get(profile) if isinstance(profile, str) else None)
        # the device's HTTP credential, written into its files by the vendor's own settings
        config = self.table.payload(mac, "config")
        auth = config.get("auth") if isinstance(config, dict) else None
        if isinstance(auth, dict):
            found |= {v for k, v in auth.items() if k in HttpAuth.SECRETS and isinstance(v, str) and v}
        return found

    def row_html(self, d: Any, admin: bool) -> str:
        """One <tr> of the list, kept until the device (or a profile) changes: a list of 10,000
        rows is then mostly a join of ready strings."""
        key = (d.mac, admin)
        cached = self._rows.get(key)
        if cached is not None and cached[0] is d and cached[1] == self.table.profiles_version:
            return cached[2]
        r = self.row(d.mac, admin) or {}
        e = {k: escape(v) for k, v in r.items()}
        html = (f'<tr data-mac="{e["mac"]}" data-stage="{e["stage"]}" data-vendor="{e["vendor"]}">'
                f'<td class="mac"><a href="/devices/{e["mac"]}">{e["mac"]}</a></td><td>{e["vendor"]}</td>'
                f'<td>{e["model"]}</td><td>{e["firmware"]}</td><td>{e["ip"]}</td><td class="stage">'
                f'<span class="stage stage-{e["stage"]}">{e["label"]}</span></td>'
                f'<td class="enrolment enrolment-{e["enrolment"]}">{e["enrolment_detail"]}</td>'
                f'<td class="detail">{e["detail"]}</td><td class="time">{e["updated_at"]}</td></tr>\n')
        self._rows[key] = (d, self.table.profiles_version, html)
        return html

    def devices_page(self, request: server.Request, session: Session) -> bytes:
        where = Filter(stage=self._arg(request, "stage") or "", vendor=self._arg(request, "vendor") or "",
                       text=(self._arg(request, "q") or "").strip())
        if len(self._rows) > 2 * len(self.table.devices) + 1000:  # devices that left the table
            self._rows.clear()
        found = self.table.rows(where)
        rows_html = Markup("".join(self.row_html(d, session.admin) for d in found))
        return self._render(request, "devices.html", session, rows_html=rows_html, shown=len(found), where=where,
                            vendors=self.table.vendors(), counts=self.table.counts(), total=len(self.table.devices))

    def events(self, request: server.Request, session: Session) -> Any:
        mac = self._arg(request, "mac")
        if mac is not None and not is_mac(mac):
            raise Page(404, "notfound.html", session=session, what=f"device {mac}")
        if len(self.service.hub.clients) >= MAX_STREAMS:
            raise Page(503, "error.html", session=session, message="too many open live views; close some tabs")
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"X-Accel-Buffering", b"no")
        client = _stream_client(request, session.admin, mac, self._arg(request, "rows") != "0")
        request.write(b"retry: 2000\n\n")
        request.write(b"event: broker\ndata: " + json.dumps({"connected": self.service.connected}).encode() + b"\n\n")
        hub = self.service.hub
        hub.clients.add(client)
        request.notifyFinish().addBoth(lambda _: hub.clients.discard(client))
        return server.NOT_DONE_YET

    def device_page(self, request: server.Request, session: Session, mac: str, code: int = 200,
                    form: forms.Outcome | None = None, fields: dict[str, str] | None = None,
                    notice: str = "") -> bytes:
        d = self.table.device(mac)
        assignment = self.table.payload(mac, "assignment")
        assignment = assignment if isinstance(assignment, dict) else None
        config = self.table.payload(mac, "config")
        files = [f for f in (config.get("files") or []) if isinstance(f, dict)] if isinstance(config, dict) else []
        disc = self.table.payload(mac, "discovered")
        events = [self._event(mac, e, session.admin) for e in reversed(self.table.timeline(mac))]
        values = fields if fields is not None else forms.to_fields(assignment or {})
        accounts = max([int(k.split(".")[1]) + 1 for k in values if k.startswith("accounts.")] + [0]) + 1
        keys = max([int(k.split(".")[1]) + 1 for k in values if k.startswith("keys.")] + [0]) + 1
        row = self.row(mac, session.admin)
        enrolment = self.table.payload(mac, "enrolment")
        error = self.table.payload(mac, "error")
        return self._render(
            request, "device.html", session, code, mac=mac, d=d, row=row, events=events, files=files,
            enrolment_facts=_enrolment_facts(enrolment),
            conflict=error if isinstance(error, dict) and error.get("code") == "conflict" else None,
            config=config if isinstance(config, dict) else {}, disc=disc if isinstance(disc, dict) else {},
            assignment=assignment,
            assignment_text=_describe_assignment(assignment),
            values=values, errors=(form.errors if form else {}), warnings=(form.warnings if form else []),
            accounts=range(min(accounts, 16)), keys=range(min(keys, 200)),
            has_secret=lambda name: forms.has_secret(assignment, name), choices=forms.choices, notice=notice
            or (self._arg(request, "done") or ""))

    def file_page(self, request: server.Request, session: Session, mac: str, name: str) -> bytes:
        if not session.admin:
            raise Page(403, "error.html", session=session, message="file contents are for admins only")
        config = self.table.payload(mac, "config")
        files = config.get("files") if isinstance(config, dict) else None
        found = next((f for f in files or [] if isinstance(f, dict) and f.get("name") == name), None)
        if found is None:
            raise Page(404, "notfound.html", session=session, what=f"file {name} of {mac}")
        content = text if isinstance(text := found.get("content"), str) else ""
        if found.get("encoding") == "base64":
            content = "(binary file: not shown)"
        return self._render(request, "file.html", session, mac=mac, file=found,
                            content=mask(content, self._secrets(mac)))

    def assign_post(self, request: server.Request, session: Session, mac: str) -> Any:
        previous = self.table.payload(mac, "assignment")
        fields = [(k, v) for k, v in self._fields(request) if k != "csrf"]
        outcome = forms.to_document(fields, previous if isinstance(previous, dict) else None)
        if not outcome.ok:
            values = {k: v for k, v in fields if k.rsplit(".", 1)[-1] not in forms.SECRET_FIELDS}
            return self.device_page(request, session, mac, 422, outcome, values)
        return self.publish_then(request, session, [Item("console", mac, outcome.document)], f"/devices/{mac}",
                                 "assignment published", outcome.warnings)

    def publish_then(self, request: server.Request, session: Session, items: list[Item], back: str,
                     done: str, warnings: list[str] | None = None) -> Any:
        """Publish, and answer once the broker acknowledged (or say why not)."""
        if not self.service.connected:
            raise Page(503, "error.html", session=session,
                       message="the broker is not reachable: nothing was published; try again once it is back")
        d = self.service.assign(items)

        def acked(ok: bool) -> None:
            log.info("{user} published {n} assignment(s): {what}", user=session.user, n=len(items),
                     what=", ".join(f"{i.mac}{' (unassign)' if i.payload is None else ''}" for i in items[:20]))
            text = done if ok else done + " (the broker has not acknowledged it yet)"
            if warnings:
                text += "; " + "; ".join(warnings)
            _finish(request, self._redirect(request, back + "?" + urlencode({"done": text})))

        def failed(f: Any) -> None:
            f.trap(NotConnected)
            _finish(request, self._page(request, Page(503, "error.html", session=session,
                                                      message="the broker is not reachable: nothing was published")))

        d.addCallbacks(acked, failed)
        d.addErrback(_failed, request, "publish")
        return server.NOT_DONE_YET

    def command_post(self, request: server.Request, session: Session, order: Order) -> Any:
        """Re-arm or rotate: publish the retained command, answer once the broker has it."""
        if not self.service.connected:
            raise Page(503, "error.html", session=session,
                       message="the broker is not reachable: nothing was published; try again once it is back")
        d = self.service.command(order)
        done = ("re-arm requested: a new credential and a new enrolment epoch follow"
                if order.kind == "rearm" else
                "credential rotation requested: the old one works until the phone fetched the new file")

        def acked(ok: bool) -> None:
            log.info("{user} published {kind} for {mac} (id {id})", user=session.user, kind=order.kind,
                     mac=order.mac, id=order.id)
            text = done if ok else done + " (the broker has not acknowledged it yet)"
            _finish(request, self._redirect(request, f"/devices/{order.mac}?" + urlencode({"done": text})))

        def failed(f: Any) -> None:
            f.trap(NotConnected)
            _finish(request, self._page(request, Page(503, "error.html", session=session,
                                                      message="the broker is not reachable: nothing was published")))

        d.addCallbacks(acked, failed)
        d.addErrback(_failed, request, order.kind)
        return server.NOT_DONE_YET

    # --- bulk import ---
    def import_post(self, request: server.Request, session: Session) -> Any:
        text = (request.args.get(b"file") or [b""])[0] or (request.args.get(b"text") or [b""])[0]
        try:
            body = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Page(400, "import.html", session=session, error="the file is not UTF-8 text")
        if not body.strip():
            raise Page(400, "import.html", session=session, error="choose a CSV or JSON file, or paste one")
        try:
            items, refused = read_json(body) if body.lstrip()[:1] in ("{", "[") else read_csv(body)
        except Refused as exc:
            raise Page(400, "import.html", session=session, error=str(exc), text=body[:100_000])
        ok, warnings = vet(items, refused)
        if self._arg(request, "dry_run") or not ok:
            return self._render(request, "import.html", session, 200 if ok else 400, ok=ok, refused=refused,
                                warnings=warnings, dry_run=True, text=body[:100_000])
        if not self.service.connected:
            raise Page(503, "import.html", session=session, error="the broker is not reachable: nothing was published",
                       text=body[:100_000])
        d = self.service.assign(ok)
        d.addCallback(lambda acked: _finish(request, self._render(
            request, "import.html", session, ok=ok, refused=refused, warnings=warnings, acked=acked, published=True)))
        d.addErrback(_failed, request, "import")
        return server.NOT_DONE_YET

    # --- profiles ---
    def profiles(self, request: server.Request, session: Session, rest: list[str], get: bool) -> Any:
        if not rest and get:
            names = sorted(self.table.profiles)
            return self._render(request, "profiles.html", session, names=names,
                                users={n: len(self.table.users_of(n)) for n in names})
        if not rest and not get:  # a new one, by name
            name = (self._arg(request, "name") or "").strip()
            if not _profile_name(name):
                raise Page(400, "error.html", session=session,
                           message="a profile name is 1-64 of A-Z a-z 0-9 _ . -")
            raise Redirect(f"/profiles/{quote(name)}")
        name = rest[0]
        if not _profile_name(name) or len(rest) > 2:
            raise Page(404, "notfound.html", session=session, what=f"profile {name}")
        document = self.table.profiles.get(name)
        if get and len(rest) == 1:
            shown = document if session.admin else _masked_doc(document)
            return self._render(request, "profile.html", session, name=name, exists=document is not None,
                                text=json.dumps(shown, indent=2, sort_keys=True) if document is not None else "{\n}",
                                users=self.table.users_of(name), done=self._arg(request, "done") or "")
        if not get and rest[1:] == ["delete"]:
            return self._publish_profile(request, session, name, None)
        if not get and len(rest) == 1:
            text = self._arg(request, "document") or ""
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise Page(422, "profile.html", session=session, name=name, exists=document is not None, text=text,
                           users=self.table.users_of(name), error=f"not JSON: {exc}")
            problem = schema.first_problem(doc, partial=True) if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or problem is not None:
                raise Page(422, "profile.html", session=session, name=name, exists=document is not None, text=text,
                           users=self.table.users_of(name),
                           error=problem.message if problem else "a profile is a JSON object")
            return self._publish_profile(request, session, name, doc)
        raise Page(404, "notfound.html", session=session, what=f"profile {name}")

    def _publish_profile(self, request: server.Request, session: Session, name: str, doc: dict | None) -> Any:
        if not self.service.connected:
            raise Page(503, "error.html", session=session, message="the broker is not reachable: nothing was published")
        d = self.service.publish_profile(name, doc)
        where = f"/profiles/{quote(name)}" if doc is not None else "/profiles"
        d.addCallback(lambda ok: _finish(request, self._redirect(
            request, where + "?" + urlencode({"done": "profile saved" if doc is not None else "profile deleted"}))))
        d.addErrback(_failed, request, "profile")
        return server.NOT_DONE_YET

    # --- services ---
    def services_page(self, request: server.Request, session: Session) -> bytes:
        rows = []
        for (service, instance), data in sorted(self.table.services.items()):
            data = data if isinstance(data, dict) else {}
            counters = data.get("counters") if isinstance(data.get("counters"), dict) else {}
            rows.append({"service": service, "instance": instance, "state": str(data.get("state") or "?"),
                         "version": data.get("version"), "at": data.get("at"), "started_at": data.get("started_at"),
                         "counters": counters})
        return self._render(request, "services.html", session, rows=rows)


MAX_STREAMS = 200  # open event streams, all users together
MAX_BUFFERED = 8 * 1024 * 1024  # bytes a stream may have unsent before it is dropped


def _buffered(request: server.Request) -> int:
    transport = getattr(request.channel, "transport", None)
    return len(getattr(transport, "dataBuffer", b"")) + getattr(transport, "_tempDataLen", 0)


def _stream_client(request: server.Request, admin: bool, mac: str | None, rows: bool) -> Any:
    from console.service import Client

    def write(data: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        # A browser that stops reading must not make the console hold a storm's worth of events.
        if _buffered(request) > MAX_BUFFERED:
            log.warn("dropping an event stream that stopped reading")
            transport = request.channel.transport
            assert transport is not None  # the request's connection is open (checked above)
            transport.loseConnection()
            return
        request.write(data)

    return Client(write, admin, mac, rows)


def _failed(failure: Failure, request: server.Request, what: str) -> None:
    log.failure(what, failure)
    _finish(request, b"")


def _finish(request: server.Request, body: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    if body:
        request.write(body)
    request.finish()


def _local(target: str) -> str:
    # Only a path of ours: an open redirect would send a fresh login to another site.
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _profile_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name))


def _masked_doc(document: Any) -> Any:
    from tools.monitor import redact

    return redact(document)


def _enrolment_facts(data: Any) -> list[tuple[str, str]]:
    """The enrolment payload's facts for the device page, as (label, text); nothing for a
    payload that is not an object."""
    if not isinstance(data, dict):
        return []
    facts = [("Epoch", str(data.get("epoch", "?"))), ("Since", when(data.get("since"))),
             ("Until", when(data.get("until")))]
    for label, key in (("Bound to", "bound"), ("First seen at", "candidate")):
        value = data.get(key)
        facts.append((label, value if isinstance(value, str) and value else "–"))
    addresses = data.get("addresses")
    if isinstance(addresses, list) and addresses:
        facts.append(("Addresses", ", ".join(str(a)[:64] for a in addresses[:4]) + (" …" if len(addresses) > 4 else "")))
    if isinstance(reason := data.get("reason"), str) and reason:
        facts.append(("Reason", reason))
    return facts


def _describe_assignment(assignment: Any) -> str:
    from tools.monitor import describe

    return describe("assignment", assignment) if assignment else ""


class LimitedRequest(server.Request):
    """A request whose body may not exceed MAX_BODY: refused as it arrives, never spooled."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        assert self.content is not None  # gotLength made it before the first chunk
        if self.content.tell() + len(data) > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self.too_large = True
        transport = self.channel.transport
        assert transport is not None  # a chunk just arrived on it
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                        b"Content-Length: 35\r\n\r\nthe upload is too large (4 MiB max)")
        transport.loseConnection()


def make_site(root: Console) -> server.Site:
    site = server.Site(root, requestFactory=LimitedRequest)
    site.displayTracebacks = False
    return site


__all__ = ["Console", "make_site"]
