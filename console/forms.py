"""The assignment form: HTML field names <-> an assignment document, and its errors per field.

Inputs are named by JSON path (``accounts.0.sip_server``). The schema itself says what a value
is (whole number, true/false, list of codecs), so the same rules run in the page (console.js
reads the schema from /schema.json) and here. Validation is ``pnp assign``'s: the schema
without its required fields refuses (a profile may supply what is missing), and what is missing
is a warning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from generator import schema
from tools.assign import Item, check
from generator.merge import strip_nulls

# Fields whose value is never sent back to the browser: the form shows them empty, and an empty
# one keeps what the assignment had.
SECRET_FIELDS = ("password", "admin_password")
TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass
class Outcome:
    document: dict
    errors: dict[str, str] = field(default_factory=dict)  # field name -> message ("" = the form)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _node(path: list[str]) -> dict | None:
    """The schema node at a form path (indices are list items), or None when it has none."""
    node: dict = schema.SCHEMA
    for part in path:
        node = _deref(node)
        if part.isdigit():
            child = node.get("items") if node.get("type") == "array" else None
        else:
            child = (node.get("properties") or {}).get(part)
        if not isinstance(child, dict):
            return None
        node = child
    return _deref(node)


def _deref(node: dict) -> dict:
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**schema.SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]], **extra}
    return node


def _value(path: list[str], text: str) -> Any:
    node = _node(path) or {}
    kind = node.get("type")
    if kind == "integer" and re.fullmatch(r"-?[0-9]{1,9}", text):
        return int(text)
    if kind == "boolean":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
    if kind == "array" and "enum" in (node.get("items") or {}):
        return [c.lower() for c in re.split(r"[\s,;|]+", text) if c]
    if kind == "object" and path == ["vendor_settings"]:
        return json.loads(text)
    return text


def to_document(fields: Iterable[tuple[str, str]], previous: dict | None = None) -> Outcome:
    """The assignment the submitted fields describe. Empty fields are left out; a list entry
    with every field empty is dropped; an empty secret keeps ``previous``'s."""
    tree: dict = {}
    errors: dict[str, str] = {}
    for name, raw in fields:
        text = raw if name.rsplit(".", 1)[-1] in SECRET_FIELDS else raw.strip()
        if not text or name in ("csrf",):
            continue
        path = name.split(".")
        if not all(path) or len(path) > 4:
            errors[""] = f"{name!r} is not a field of the assignment"
            continue
        try:
            value = _value(path, text)
        except ValueError as exc:
            errors[name] = f"{name} is not JSON: {exc}"
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    document, index = _listify(tree, ())
    _keep_secrets(document, previous or {})
    outcome = Outcome(document, errors)
    if errors:
        return outcome
    for problem in schema.problems(strip_nulls(document), partial=True):
        name = field_name(problem.field, index)
        outcome.errors.setdefault(name, problem.message)
    if not outcome.errors:
        _, outcome.warnings = check(Item("form", "000000000000", document))
    return outcome


def _listify(node: Any, path: tuple) -> tuple[Any, dict[tuple, int]]:
    """Dicts keyed by digits become lists in index order, without gaps; returns the map from
    each kept entry's form path to its list position (for putting errors next to fields)."""
    index: dict[tuple, int] = {}
    if not isinstance(node, dict):
        return node, index
    if node and all(k.isdigit() for k in node):
        out: list[Any] = []
        for key in sorted(node, key=int):
            value, sub = _listify(node[key], path + (key,))
            index[path + (key,)] = len(out)
            index.update(sub)
            out.append(value)
        return out, index
    out_d = {}
    for key, value in node.items():
        out_d[key], sub = _listify(value, path + (key,))
        index.update(sub)
    return out_d, index


def field_name(problem_field: str | None, index: dict[tuple, int] | None = None) -> str:
    """``accounts[1].transport`` -> the input's name (``accounts.1.transport``); with ``index``,
    in the form's own numbering when empty entries were dropped."""
    if not problem_field:
        return ""
    parts = [p for p in re.split(r"[.\[\]]+", problem_field) if p]
    back: dict[tuple[tuple[str, ...], int], str] = {(form_path[:-1], position): form_path[-1] for form_path, position in (index or {}).items()}
    fixed: list[str] = []
    for part in parts:
        fixed.append(back.get((tuple(fixed), int(part)), part) if part.isdigit() else part)
    return ".".join(fixed)


def _keep_secrets(document: dict, previous: dict) -> None:
    if "admin_password" not in document and isinstance(previous.get("admin_password"), str):
        document["admin_password"] = previous["admin_password"]
    old = found if isinstance(found := previous.get("accounts"), list) else []
    for i, account in enumerate(document.get("accounts") or []):
        if (isinstance(account, dict) and "password" not in account and i < len(old)
                and isinstance(old[i], dict) and isinstance(old[i].get("password"), str)):
            account["password"] = old[i]["password"]


def to_fields(document: Any) -> dict[str, str]:
    """The form's values for an assignment, secrets left out."""
    out: dict[str, str] = {}

    def walk(value: Any, path: list[str]) -> None:
        if path == ["vendor_settings"]:
            out["vendor_settings"] = json.dumps(value, sort_keys=True)
        elif path and path[-1] in SECRET_FIELDS:
            return
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [str(k)])
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(v, path + [str(i)])
        elif isinstance(value, list):
            out[".".join(path)] = ", ".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[".".join(path)] = "yes" if value else "no"
        elif value is not None:
            out[".".join(path)] = str(value)

    walk(document if isinstance(document, dict) else {}, [])
    return out


def has_secret(document: Any, name: str) -> bool:
    """Whether the assignment holds a value for secret field ``name`` (shown as 'unchanged')."""
    node: Any = document
    for part in name.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return False
    return isinstance(node, str) and bool(node)


def choices(name: str) -> list[str]:
    """The allowed values of an enum field (for a <select>), else []."""
    node = _node(name.split(".")) or {}
    return list(node.get("enum") or [])
