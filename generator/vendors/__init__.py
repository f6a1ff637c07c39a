"""Vendor families: which file names a phone reads, and how assignment fields map to settings.

One package per vendor (``grandstream``, ``yealink``, ``snom``, ``fanvil``); in it the family's
record (``record.py``: models, OUIs, file names, NOTIFY form, every setting with its source; see
``generator/vendors/record.py``), one template folder per family
(``grandstream/grp26xx/cfg.xml.j2``) and a :class:`Family` value holding the record, the file
names and a ``context`` function that turns a validated assignment into what the templates
print. Plain data and functions: a new family is a new value in ``FAMILIES``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from generator.vendors.record import Model, Record


class RenderProblem(Exception):
    """An assignment that is valid JSON Schema-wise but cannot be rendered for this phone."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class FileSpec:
    role: str  # the template is "{role}.j2"
    name: str  # file name pattern: {mac} lower-case MAC, {MAC} upper-case, other names from the context
    content_type: str


@dataclass(frozen=True)
class ConfigServer:
    """Where the phone fetches its files once Plug and Play has given it the first one, and as
    whom: the fileserver's credentialed route (``{PNP_PUBLIC_URL}c/``; the phone appends its file
    names) with the device's own HTTP user and password, written with the vendor's own settings."""

    url: str  # ends in "/"
    user: str
    password: str


@dataclass(frozen=True)
class Target:
    """The phone a file is rendered for."""

    mac: str
    vendor: str
    model: str  # canonical spelling from the family's table
    firmware: str
    info: "Model"
    # None: no server of ours is written (no PNP_PUBLIC_URL given, or the assignment names its own)
    server: ConfigServer | None = None


@dataclass(frozen=True)
class Family:
    record: "Record"
    files: tuple[FileSpec, ...]
    notify_file: str  # pattern like FileSpec.name: the file a NOTIFY names when the record says "file"
    context: Callable[[dict, Target], dict]
    # model spellings phones send -> the table's key ("SIP-T46S" -> "T46S")
    canonical: Callable[[str], str] = lambda model: model.upper()

    @property
    def vendor(self) -> str:
        return self.record.vendor

    @property
    def name(self) -> str:
        return self.record.family

    @property
    def models(self) -> Mapping[str, "Model"]:
        return self.record.models


    def file_names(self, target: Target, context: Mapping[str, Any]) -> list[str]:
        values = {"mac": target.mac, "MAC": target.mac.upper(), **context.get("names", {})}
        return [spec.name.format(**values) for spec in self.files]

    def notify(self, target: Target, context: Mapping[str, Any], body: str | None = None) -> str:
        """What the NOTIFY's URL appends to the phone's directory: "" (the directory itself) or the
        per-phone file, as ``body`` (default: the record's) says."""
        if (body or self.record.notify.body) == "directory":
            return ""
        values = {"mac": target.mac, "MAC": target.mac.upper(), **context.get("names", {})}
        return self.notify_file.format(**values)


def _families() -> list[Family]:
    # Imported here: the vendor packages import the classes above from this module.
    from generator.vendors import fanvil, grandstream, snom, yealink

    return [grandstream.FAMILY, yealink.FAMILY, snom.FAMILY, fanvil.FAMILY]


FAMILIES: list[Family] = _families()
RECORDS: dict[str, "Record"] = {f.vendor: f.record for f in FAMILIES}

_VENDOR_SPELLING = re.compile(r"[^a-z0-9]+")


def vendor_key(vendor: str) -> str:
    return _VENDOR_SPELLING.sub("", vendor.lower())


def find(vendor: str, model: str) -> tuple[Family, str]:
    """The family and canonical model for a phone, or RenderProblem('no_template')."""
    wanted = vendor_key(vendor)
    families = [f for f in FAMILIES if f.vendor == wanted]
    for family in families:
        canonical = family.canonical(model)
        if canonical in family.models:
            return family, canonical
    if not families:
        known = ", ".join(sorted({f.vendor for f in FAMILIES}))
        raise RenderProblem("no_template", f"no template for vendor {vendor!r} (model {model!r}); "
                            f"templates exist for {known}", "vendor")
    models = ", ".join(m for f in families for m in f.models)
    raise RenderProblem("no_template", f"no template for {vendor} model {model!r}; "
                        f"known {vendor} models: {models}", "model")
