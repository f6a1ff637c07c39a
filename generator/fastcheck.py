"""A compiled yes/no check of the assignment schema, for the common case: a valid document.

jsonschema stays the authority: when this check says no (or meets anything it is not sure of,
such as 5.0 where an integer is expected), the caller asks jsonschema, which also words the
message. This check only ever answers "valid" for documents jsonschema accepts (a property test
compares the two); it exists because jsonschema's general machinery costs about a millisecond per
assignment, and the generator aims at thousands per second.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

Check = Callable[[Any], bool]

_IGNORED = {"$schema", "$id", "title", "description", "$defs", "default", "examples"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


@lru_cache(maxsize=None)
def compile_pattern(pattern: str) -> re.Pattern:
    """A schema ``pattern`` as JSON Schema means it (ECMA-262, where ``$`` is the end of the text)
    for Python's ``re``, where ``$`` also matches before a final newline: ``"P34\\n"`` would pass
    ``^[A-Za-z0-9]+$``. So every ``$`` outside a character class becomes ``\\Z``; the schema file
    itself keeps ``$``, which every other JSON Schema implementation reads right."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # Python reads a ] right after [ or [^ as a literal, not as the class's end
            opening = "[^]" if pattern.startswith("[^]", i) else "[]" if pattern.startswith("[]", i) else ""
            if opening:
                out.append(opening)
                i += len(opening)
                continue
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out))


def compile_schema(schema: dict, root: dict | None = None) -> Check:
    """A function telling whether a document is valid; raises ValueError for keywords it does
    not implement, so a schema change cannot quietly weaken it."""
    root = schema if root is None else root
    checks: list[Check] = []
    node = schema
    if "$ref" in node:
        target = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
        checks.append(compile_schema(target, root))
    for keyword, value in node.items():
        if keyword in _IGNORED or keyword == "$ref":
            continue
        checks.append(_keyword(keyword, value, node, root))

    def check(document: Any) -> bool:
        for c in checks:
            if not c(document):
                return False
        return True

    return check


def _keyword(keyword: str, value: Any, node: dict, root: dict) -> Check:
    if keyword == "type":
        if value not in _TYPES:
            raise ValueError(f"type {value!r} not implemented")
        return _TYPES[value]
    if keyword == "enum":
        options = list(value)
        if not all(isinstance(o, str) for o in options):
            raise ValueError("only enums of strings are implemented")
        return lambda v: isinstance(v, str) and v in options
    if keyword == "pattern":
        search = compile_pattern(value).search
        return lambda v: not isinstance(v, str) or search(v) is not None
    if keyword in ("minimum", "maximum"):
        low = keyword == "minimum"
        return lambda v: not _number(v) or (v >= value if low else v <= value)
    if keyword in ("minLength", "maxLength"):
        low = keyword == "minLength"
        return lambda v: not isinstance(v, str) or (len(v) >= value if low else len(v) <= value)
    if keyword in ("minItems", "maxItems"):
        low = keyword == "minItems"
        return lambda v: not isinstance(v, list) or (len(v) >= value if low else len(v) <= value)
    if keyword == "uniqueItems":
        if not value:
            return lambda v: True
        return lambda v: not isinstance(v, list) or (all(isinstance(i, str) for i in v) and len(set(v)) == len(v))
    if keyword == "required":
        names = list(value)
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)
    if keyword == "properties":
        props = {name: compile_schema(sub, root) for name, sub in value.items()}

        def properties(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name, sub in v.items():
                c = props.get(name)
                if c is not None and not c(sub):
                    return False
            return True
        return properties
    if keyword == "additionalProperties":
        known = set(node.get("properties", {}))
        if value is False:
            return lambda v: not isinstance(v, dict) or all(k in known for k in v)
        extra = compile_schema(value, root)
        return lambda v: not isinstance(v, dict) or all(extra(x) for k, x in v.items() if k not in known)
    if keyword == "propertyNames":
        name_check = compile_schema(value, root)
        return lambda v: not isinstance(v, dict) or all(name_check(k) for k in v)
    if keyword == "items":
        item = compile_schema(value, root)
        return lambda v: not isinstance(v, list) or all(item(x) for x in v)
    if keyword == "anyOf":
        options = [compile_schema(sub, root) for sub in value]
        return lambda v: any(o(v) for o in options)
    raise ValueError(f"keyword {keyword!r} not implemented")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
