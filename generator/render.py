"""Jinja2 in a sandbox: an assignment and a phone in, the phone's files (bytes) out.

Templates are looked up model first, then family, then vendor (``grandstream/grp2614/cfg.xml.j2``,
``grandstream/grp26xx/cfg.xml.j2``, ``grandstream/cfg.xml.j2``), in ``PNP_TEMPLATE_DIR`` before
the built-in ones, so an operator can override one model or a whole family. Undefined names are
errors (``StrictUndefined``); ``.xml`` templates escape every value they print.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from generator import vendors
from generator.vendors import ConfigServer, Family, RenderProblem, Target

BUILTIN = Path(vendors.__file__).parent


@dataclass(frozen=True)
class File:
    name: str
    content_type: str
    body: bytes

    @functools.cached_property
    def sha256(self) -> str:
        # asked twice per rendering (the digest, the config): hashed once
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Rendered:
    files: tuple[File, ...]
    template: str  # the template folder of the first file, e.g. "grandstream/grp26xx"
    vendor: str
    model: str
    notify_path: str

    @property
    def digest(self) -> str:
        """One checksum over every file's name and bytes: equal digests mean identical output."""
        return files_digest((f.name, f.sha256) for f in self.files)


def files_digest(files: Iterable[tuple[str, str]]) -> str:
    """The digest of files given as (name, sha256) pairs, in order."""
    h = hashlib.sha256()
    for name, sha256 in files:
        h.update(name.encode() + b"\0" + sha256.encode() + b"\n")
    return h.hexdigest()


def _autoescape(name: str | None) -> bool:
    return name is not None and (name.endswith(".xml.j2") or name.endswith(".xml"))


class Renderer:
    def __init__(self, template_dir: Path | None = None, notify_body: dict[str, str] | None = None) -> None:
        # vendor -> "directory" or "file": overrides the record's NOTIFY body (PNP_NOTIFY_BODY)
        self.notify_body = dict(notify_body or {})
        loaders: list[jinja2.BaseLoader] = []
        if template_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(template_dir)))
        loaders.append(jinja2.FileSystemLoader(str(BUILTIN)))
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._chosen: dict[tuple[str, str, str], jinja2.Template] = {}

    def template(self, family: Family, model: str, role: str) -> jinja2.Template:
        key = (family.vendor, model, role)
        found = self._chosen.get(key)
        if found is None:
            candidates = [f"{family.vendor}/{model.lower()}/{role}.j2",
                          f"{family.vendor}/{family.name}/{role}.j2",
                          f"{family.vendor}/{role}.j2"]
            try:
                found = self.env.select_template(candidates)
            except jinja2.TemplatesNotFound:
                raise RenderProblem("no_template", f"no template for {family.vendor} {model}: none of "
                                    f"{', '.join(candidates)} exists") from None
            except jinja2.TemplateSyntaxError as exc:
                raise RenderProblem("template", f"template {exc.name or candidates[0]} line {exc.lineno}: "
                                    f"{exc.message}") from None
            self._chosen[key] = found
        return found

    def render(self, mac: str, vendor: str, model: str, firmware: str, assignment: dict,
               server: ConfigServer | None = None) -> Rendered:
        """The files of one phone; ``server``: our config server and the phone's credentials for
        it (unused when the assignment names its own config server). Raises RenderProblem (no
        template, model limits, template errors)."""
        family, canonical = vendors.find(vendor, model)
        if server is not None and "config_server" in (assignment.get("provisioning") or {}):
            server = None  # the assignment's own server wins: the phone leaves us for it
        target = Target(mac, family.vendor, canonical, firmware, family.models[canonical], server)
        context: dict[str, Any] = {
            "mac": mac, "MAC": mac.upper(), "vendor": family.vendor, "model": canonical,
            "firmware": firmware, "assignment": assignment,
        }
        context.update(family.context(assignment, target))
        names = family.file_names(target, context)
        files = []
        first = ""
        for spec, name in zip(family.files, names):
            template = self.template(family, canonical, spec.role)
            first = first or (template.name or "").rsplit("/", 1)[0]
            try:
                text = template.render(context)
            except jinja2.TemplateError as exc:
                line = getattr(exc, "lineno", None)
                where = f" line {line}" if line else ""
                raise RenderProblem("template", f"template {template.name}{where} failed: {exc}") from None
            except Exception as exc:  # a user's template may fail in any way; the phone keeps its file
                raise RenderProblem("template", f"template {template.name} failed: "
                                    f"{type(exc).__name__}: {exc}") from None
            if not text.endswith("\n"):
                text += "\n"
            files.append(File(name, spec.content_type, text.encode("utf-8")))
        body = self.notify_body.get(family.vendor, family.record.notify.body)
        return Rendered(tuple(files), first, family.vendor, canonical, family.notify(target, context, body))
