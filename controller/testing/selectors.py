"""Label and field selectors, as the API server evaluates them on list and watch."""

from __future__ import annotations

import re

_SET = re.compile(r"^\s*(!?)([^\s!=,()]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|=|!=)\s*([^\s,]*))?\s*$")


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def matches_labels(selector: str | None, obj: dict) -> bool:
    """True if the object's labels satisfy an equality- or set-based selector."""
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in _split(selector):
        match = _SET.match(term)
        if match is None:
            raise ValueError(f"bad label selector term: {term!r}")
        negate, key, set_op, values, op, value = match.groups()
        if set_op:
            choices = {v.strip() for v in values.split(",") if v.strip()}
            ok = labels.get(key) in choices if key in labels else False
            ok = ok if set_op == "in" else not ok
        elif op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        else:
            ok = (key in labels) != bool(negate)
        if not ok:
            return False
    return True


def matches_fields(selector: str | None, obj: dict) -> bool:
    """`metadata.name` and `metadata.namespace` field selectors (= and !=)."""
    if not selector:
        return True
    meta = obj.get("metadata", {})
    for term in _split(selector):
        negate = "!=" in term
        key, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        field = key.strip().removeprefix("metadata.")
        if (meta.get(field) == value.strip()) == negate:
            return False
    return True
