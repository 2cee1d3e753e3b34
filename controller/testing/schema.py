"""What a kube-apiserver does with a CRD's structural schema: defaulting, pruning, validation.

Used by the fake API server, so custom resources are defaulted, pruned and rejected there as a
real server would, and by the tests, which check the CRD manifests themselves.
Only the transition rule `self == oldSelf` (immutability) of CEL is understood.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema

ROOT_KEEP = ("apiVersion", "kind", "metadata")
IMMUTABLE_RULE = "self == oldSelf"


def apply_defaults(schema: dict, value: Any) -> Any:
    """Fill in `default`s of absent properties, recursively, in place; return the value."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in (schema.get("properties") or {}):
                    apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


def prune(schema: dict, value: Any, *, root: bool = False) -> Any:
    """Drop fields the schema does not declare (unless it preserves unknown fields), in place."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(value):
            if root and key in ROOT_KEEP:
                continue
            if props is not None and key in props:
                prune(props[key], value[key])
            elif isinstance(extra, dict):
                prune(extra, value[key])
            elif extra is True:
                continue
            elif props is not None or extra is False or schema.get("type") == "object":
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune(schema["items"], item)
    return value


def to_jsonschema(schema: Any) -> Any:
    """Translate an OpenAPI v3 (Kubernetes flavour) schema into plain JSON Schema."""
    if isinstance(schema, list):
        return [to_jsonschema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        else:
            out[key] = to_jsonschema(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def validation_errors(schema: dict, value: Any, cache: dict | None = None) -> list[str]:
    """Human-readable schema violations (empty when valid), like the API server's causes.

    `cache` (a dict kept by the caller) saves translating the schema on every call.
    """
    validator = cache.get(id(schema)) if cache is not None else None
    if validator is None:
        validator = jsonschema.Draft7Validator(to_jsonschema(schema))
        if cache is not None:
            cache[id(schema)] = validator
    errors = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "<root>"
        errors.append(f"{path}: {error.message}")
    return errors


def immutable_paths(schema: dict, path: tuple = ()) -> Iterator[tuple]:
    """Property paths carrying the CEL transition rule `self == oldSelf`."""
    for rule in schema.get("x-kubernetes-validations") or ():
        if rule.get("rule", "").replace(" ", "") == IMMUTABLE_RULE.replace(" ", ""):
            yield path
    for key, sub in (schema.get("properties") or {}).items():
        yield from immutable_paths(sub, (*path, key))


def _lookup(value: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def transition_errors(schema: dict, old: Any, new: Any) -> list[str]:
    """Violations of immutability rules between the stored object and its update."""
    errors = []
    for path in immutable_paths(schema):
        before, after = _lookup(old, path), _lookup(new, path)
        if before is not None and before != after:
            errors.append(f"{'.'.join(path)}: field is immutable")
    return errors


def structural_problems(schema: dict, path: str = "<root>") -> list[str]:
    """Why a schema is not *structural* (the rules the API server enforces on CRDs)."""
    problems = []
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") and not preserve:
        problems.append(f"{path}: type is missing")
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{path}: an array needs items")
    for key, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}{{}}")
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or ():
            if "type" in sub and "type" in schema and sub["type"] != schema["type"]:
                problems.append(f"{path}.{key}: a type under {key} must match the outer type")
    return problems
