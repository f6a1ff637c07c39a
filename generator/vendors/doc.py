"""Print docs/VENDORS.md from the vendor records: ``python -m generator.vendors.doc`` writes it,
``--check`` exits 1 when the checked-in file differs (a test runs that)."""

from __future__ import annotations

import sys
from pathlib import Path

from generator.vendors import RECORDS
from generator.vendors.record import Record

OUT = Path(__file__).resolve().parents[2] / "docs" / "VENDORS.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _record(r: Record) -> list[str]:
    lines = [f"## {r.vendor} ({r.family})", "", "Sources (the tags below refer to them):", ""]
    lines += [f"- [{tag}] {_cell(ref)}" for tag, ref in r.sources.items()] + [""]
    lines += ["| model | accounts | keys | source |", "|---|---|---|---|"]
    for name, m in r.models.items():
        extra = ", ".join(f"{k} {v}" for k, v in m.extra.items())
        lines.append(f"| {name} | {m.accounts} | {m.keys}{f' ({extra})' if extra else ''} | {_cell(m.source)} |")
    lines += ["", "MAC prefixes: " + ", ".join(f"`{p}` ({_cell(s)})" for p, s in r.ouis.items()), ""]
    lines += ["Files:", ""] + [f"- `{name}`: {_cell(what)}" for name, what in r.files.items()] + [""]
    n = r.notify
    lines += [f"NOTIFY: {n.dialog}, `Content-Type: {n.content_type}`, body the "
              f"{'directory URL ending in /' if n.body == 'directory' else 'URL of the per-phone file'}; "
              f"{'confirmed' if n.confirmed else 'not confirmed'}: {_cell(n.source)}", ""]
    lines += [f"Resync (`{r.resync.event}`): {_cell(r.resync.needs)} ({_cell(r.resync.source)})", ""]
    lines += [f"Languages (BCP 47 -> value): " + ", ".join(f"`{k}` {v}" for k, v in r.languages.items())
              + f" ({_cell(r.languages_source)})", ""]
    lines += ["| setting (regular expression) | meaning | allowed values | source |", "|---|---|---|---|"]
    for s in r.settings:
        key = s.key if len(s.key) <= 80 else s.key[:77] + "..."
        values = s.values if len(s.values) <= 60 else s.values[:57] + "..."
        lines.append(f"| `{_cell(key)}` | {_cell(s.meaning)} | `{_cell(values) or '(empty)'}` | {_cell(s.source)} |")
    lines += ["", "Not confirmed:", ""] + [f"- {_cell(u)}" for u in r.unconfirmed] + [""]
    return lines


def render() -> str:
    lines = ["# Vendor records", "",
             "Generated from `generator/vendors/<vendor>/record.py` by `python -m generator.vendors.doc`; "
             "do not edit by hand (a test checks it is current). Every setting the generator writes is "
             "listed with its meaning, the values it may take and the source it was checked against; "
             "`tests/test_vendor_records.py` parses every golden file and refuses any other key or value. "
             "Settings an operator adds through `vendor_settings` are written as given and are not checked.",
             "",
             "Every family's file also sets the phone's configuration server to the fileserver's credentialed "
             "route (`{PNP_PUBLIC_URL}c/`) with the device's own HTTP user (its MAC) and password, in the "
             "settings whose meaning says \"ours\" (docs/GENERATOR.md, \"HTTP credentials\"); an assignment's "
             "`provisioning.config_server` replaces them all (the phone leaves us for that server).",
             ""]
    for record in RECORDS.values():
        lines += _record(record)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is not current: run python -m generator.vendors.doc")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
