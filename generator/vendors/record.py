"""The shape of a vendor family's record: every fact about the family's phones we rely on, with
the source it was checked against. The records themselves are data in
``generator/vendors/<vendor>/record.py``; the listener (OUIs), the generator (models, keys, file
names, settings) and the notifier (NOTIFY form) read them, and ``docs/VENDORS.md`` is printed
from them (``python -m generator.vendors.doc``).

A setting's ``key`` and ``values`` are regular expressions matched against the whole name and
value the file carries; ``tests/test_vendor_records.py`` parses every golden file and checks that
each key written is documented and its value allowed, so an undocumented key cannot slip in.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

IN_DIALOG = "in-dialog"
OUT_OF_DIALOG = "out-of-dialog"


@dataclass(frozen=True)
class Setting:
    key: str  # regular expression for the name (Grandstream P-value, Yealink key, XML path ...)
    meaning: str
    values: str  # regular expression every written value must match
    source: str  # where the key and its values were checked ("none: ..." when nothing was found)

    def matches(self, name: str) -> bool:
        return _pattern(self.key).fullmatch(name) is not None

    def allows(self, value: str) -> bool:
        return _allowed(self.values, value)


@functools.lru_cache(maxsize=None)
def _pattern(regex: str) -> re.Pattern:
    return re.compile(regex, re.S)


# Files repeat the same few values ("0", "none", ""): rendering checks thousands of pairs a second.
@functools.lru_cache(maxsize=65536)
def _allowed(regex: str, value: str) -> bool:
    return _pattern(regex).fullmatch(value) is not None


@dataclass(frozen=True)
class Model:
    accounts: int
    keys: int  # programmable keys an assignment may fill, in order
    source: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Notify:
    """The Plug and Play NOTIFY the family's phones accept."""

    dialog: str  # IN_DIALOG or OUT_OF_DIALOG: the default; PNP_NOTIFY_DIALOG overrides it
    content_type: str
    body: str  # "directory" (URL ending in /, the phone appends its file names) or "file"
    source: str
    confirmed: bool  # False: the evidence is thin; the record says why in ``source``


@dataclass(frozen=True)
class Resync:
    event: str
    needs: str  # what the phone must have been given for a resync NOTIFY to work
    source: str


@dataclass(frozen=True)
class Record:
    vendor: str
    family: str
    ouis: dict[str, str]  # first 6 hex digits (or longer, for a sub-range) -> source
    models: dict[str, Model]
    files: dict[str, str]  # file name pattern -> what it is and the source
    notify: Notify
    resync: Resync
    settings: tuple[Setting, ...]
    languages: dict[str, str]  # BCP 47 tag (lower case) -> the vendor's value
    languages_source: str
    unconfirmed: tuple[str, ...]  # what could not be checked, and why
    sources: dict[str, str] = field(default_factory=dict)  # tag used in the sources above -> reference
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)  # name -> Setting or None

    def setting(self, name: str) -> Setting | None:
        try:
            return self._by_name[name]
        except KeyError:
            pass
        found = next((s for s in self.settings if s.matches(name)), None)
        if len(self._by_name) < 100000:  # names come from our own code, plus checked parsers' input
            self._by_name[name] = found
        return found

    def problems(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Every (name, value) written that the record does not document or allow."""
        out = []
        by_name = self._by_name
        for name, value in pairs:
            s = by_name[name] if name in by_name else self.setting(name)
            if s is None:
                out.append(f"{name}: not a documented {self.vendor} setting")
            elif not _allowed(s.values, value):
                out.append(f"{name} = {value!r}: not an allowed value ({s.values})")
        return out


def language(record: Record, tag: str) -> str:
    """The vendor's value for a BCP 47 tag: the whole tag first, then its primary language."""
    from generator.vendors import RenderProblem

    wanted = tag.lower()
    while wanted:
        if wanted in record.languages:
            return record.languages[wanted]
        wanted = wanted.rpartition("-")[0]
    known = ", ".join(sorted(record.languages))
    raise RenderProblem("unsupported", f"language {tag!r} is not available on {record.vendor} phones "
                        f"(available: {known})", "language")


# Character classes the records use for values.
TEXT = r"[^\x00-\x1f\x7f]*"
NONEMPTY = r"[^\x00-\x1f\x7f]+"
HOST = r"[A-Za-z0-9_.:\[\]-]*"
NUMBER = r"-?[0-9]+"
BOOL01 = r"[01]"
