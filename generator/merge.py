"""Profile + assignment: a deep merge in which the assignment wins.

Objects merge key by key. Lists of objects (``accounts``, ``keys``) merge entry by entry, so a
profile can hold the server of account 1 and the assignment only its user; the longer list sets
the length, and an empty list in the assignment clears the profile's. Other values (codecs, text,
numbers) are replaced. ``null`` in the assignment removes the profile's value (as in RFC 7386).
"""

from __future__ import annotations

from typing import Any


def strip_nulls(value: Any) -> Any:
    """The value without null members (what validation sees of a layer)."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def _objects(items: list) -> bool:
    return all(isinstance(item, dict) for item in items)


def merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base``; neither is modified."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = strip_nulls(value)
        return out
    if isinstance(base, list) and isinstance(over, list) and over and _objects(base) and _objects(over):
        length = max(len(base), len(over))
        merged = []
        for i in range(length):
            if i >= len(over):
                merged.append(base[i])
            elif i >= len(base):
                merged.append(strip_nulls(over[i]))
            else:
                merged.append(merge(base[i], over[i]))
        return merged
    return strip_nulls(over)


def merge_all(*layers: Any) -> Any:
    """Each layer merged onto the ones before it (profile ``default``, named profile, assignment)."""
    result: Any = {}
    for layer in layers:
        if layer is not None:
            result = merge(result, layer)
    return result
