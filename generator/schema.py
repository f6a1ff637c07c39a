"""The assignment's JSON Schema, and what a violation says to an operator.

The schema file (``assignment.schema.json``, next to this module) is the public API. A profile is
checked against the same schema with every ``required`` dropped: it holds defaults, not devices.
Messages name the field in the form ``accounts[0].transport`` and the rule it broke.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from generator.fastcheck import compile_pattern, compile_schema

SCHEMA_PATH = Path(__file__).with_name("assignment.schema.json")


@dataclass(frozen=True)
class Problem:
    """One reason an assignment cannot be used; ``field`` is None for the document itself."""

    field: str | None
    message: str
    code: str = "schema"


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k not in ("required", "minItems")}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def _pattern(validator: Any, pattern: str, instance: Any, node: dict) -> Iterable[ValidationError]:
    # jsonschema's own uses re.search, whose $ lets "Alice\n" through a pattern ending in $
    if validator.is_type(instance, "string") and compile_pattern(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with JSON Schema's meaning of "pattern" (the same one fastcheck applies)
Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})

SCHEMA = load_schema()
_PARTIAL_SCHEMA = _without_required(copy.deepcopy(SCHEMA))
_FULL = Validator(SCHEMA)
_PARTIAL = Validator(_PARTIAL_SCHEMA)
_FAST_FULL = compile_schema(SCHEMA)
_FAST_PARTIAL = compile_schema(_PARTIAL_SCHEMA)


def field_path(parts: Iterable[Any]) -> str:
    """``["accounts", 0, "transport"]`` -> ``accounts[0].transport``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(error: ValidationError) -> Problem:
    path = list(error.absolute_path)
    where = field_path(path)
    rule = error.validator
    if rule == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        name = field_path(path + [missing])
        return Problem(name, f"{name} is missing (it is required)")
    if rule == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = field_path(path + [extra[0]]) if extra else where
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return Problem(name, f"{name} is not a field of the assignment (allowed here: {allowed})")
    label = where or "the assignment"
    if rule == "type":
        return Problem(where or None, f"{label} must be {_a(error.validator_value)}, not {_short(error.instance)}")
    if rule == "enum":
        return Problem(where, f"{label}: {_short(error.instance)} is not one of {error.validator_value!r}")
    if rule == "pattern":
        if error.validator_value == SCHEMA["$defs"]["text"]["pattern"]:
            return Problem(where, f"{label} contains a control character (a line break, tab, ...)")
        return Problem(where, f"{label}: {_short(error.instance)} has characters that are not allowed "
                              f"(must match {error.validator_value})")
    if rule == "propertyNames":
        return Problem(where, f"{label}: a name in it has characters that are not allowed ({error.message})")
    if rule in ("minimum", "maximum"):
        word = "at least" if rule == "minimum" else "at most"
        return Problem(where, f"{label} must be {word} {error.validator_value}, not {_short(error.instance)}")
    if rule in ("minLength", "maxLength"):
        word = "at least" if rule == "minLength" else "at most"
        return Problem(where, f"{label} must be {word} {error.validator_value} characters long")
    if rule in ("minItems", "maxItems"):
        word = "at least" if rule == "minItems" else "at most"
        return Problem(where, f"{label} must have {word} {error.validator_value} entries")
    if rule == "uniqueItems":
        return Problem(where, f"{label} lists the same entry twice")
    if rule == "anyOf":
        if error.schema.get("description"):
            return Problem(where, f"{label}: {_short(error.instance)} is not allowed; it must be "
                                  f"{error.schema['description']}")
        return Problem(where, f"{label} must be text without control characters, a whole number, or true/false")
    return Problem(where or None, f"{label}: {error.message}")


def _a(kind: Any) -> str:
    names = {"object": "an object", "array": "a list", "string": "text", "integer": "a whole number",
             "boolean": "true or false", "number": "a number"}
    if isinstance(kind, list):
        return " or ".join(names.get(k, str(k)) for k in kind)
    return names.get(kind, str(kind))


def _sort_key(error: ValidationError) -> tuple:
    return (tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in error.absolute_path),
            str(error.validator))


def problems(document: Any, partial: bool = False) -> list[Problem]:
    """Every violation of the schema, in a fixed order (the first is the one to report)."""
    validator = _PARTIAL if partial else _FULL
    return [_problem(e) for e in sorted(validator.iter_errors(document), key=_sort_key)]


# What ``missing`` needs of a schema node: its required names, the properties under which
# something can be missing (with their plans), minItems, and the plan of its items; None where
# nothing can be missing below the node (most of the schema: text, numbers, enums).
_Plan = tuple[tuple[str, ...], tuple[tuple[str, Any], ...], int, Any]


def _plan(node: dict, seen: tuple = ()) -> _Plan | None:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name in seen:
            raise ValueError(f"the schema refers to {name} within itself: missing() cannot be planned")
        return _plan(SCHEMA["$defs"][name], seen + (name,))
    props = tuple((name, plan) for name, sub in node.get("properties", {}).items()
                  if (plan := _plan(sub, seen)) is not None)
    items = node.get("items")
    items_plan = _plan(items, seen) if isinstance(items, dict) else None
    required, min_items = tuple(node.get("required", ())), node.get("minItems", 0)
    if not required and not props and not min_items and items_plan is None:
        return None
    return required, props, min_items, items_plan


def _missing_planned(document: Any, plan: _Plan, path: tuple) -> Problem | None:
    required, props, min_items, items_plan = plan
    if isinstance(document, dict):
        for name in required:
            if name not in document:
                where = field_path(path + (name,))
                return Problem(where, f"{where} is missing (it is required)")
        for name, sub in props:
            if name in document:
                found = _missing_planned(document[name], sub, path + (name,))
                if found is not None:
                    return found
    elif isinstance(document, list):
        if len(document) < min_items:
            where = field_path(path)
            return Problem(where, f"{where} must have at least {min_items} entries")
        if items_plan is not None:
            for i, item in enumerate(document):
                found = _missing_planned(item, items_plan, path + (i,))
                if found is not None:
                    return found
    return None


def missing(document: Any) -> Problem | None:
    """The first ``required`` field (or ``minItems`` entry) missing from a document whose parts
    each passed the partial schema: what merging valid layers can still leave wrong. Walks the
    schema alongside the document, with no regular expressions, and only the parts of it under
    which something can be missing (_PLAN), so re-rendering stays cheap."""
    return None if _PLAN is None else _missing_planned(document, _PLAN, ())


def first_problem(document: Any, partial: bool = False) -> Problem | None:
    if (_FAST_PARTIAL if partial else _FAST_FULL)(document):
        return None
    found = problems(document, partial)
    return found[0] if found else None


_PLAN = _plan(SCHEMA)
