"""SessionRecord <-> the JSON document stored at `session:<id>`.

The document is AgentCube's `SandboxInfo` where the two overlap, so upstream tools reading the
same Redis see familiar fields (RFC 3339 times, a Go duration for the idle timeout). Go's
formats lose precision and have no place for our own fields, so the `kernelcube` sub-object
carries every other record field, times as plain unix seconds: decoding reads it first, and
`record_from_info(record_to_info(r)) == r` holds exactly.
"""

from __future__ import annotations

import calendar
import math
import re
import time

from .base import SessionRecord

# Record fields that live only at the top level, under AgentCube's names.
TOP_LEVEL = {"session_id": "sessionId", "namespace": "sandboxNamespace",
             "sandbox_id": "sandboxId", "status": "status", "entry_points": "entryPoints"}
OURS = "kernelcube"
SANDBOX_KIND = "Sandbox"  # AgentCube's kind for a directly created sandbox (vs SandboxClaim)

_GO_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
                "m": 60 * 10**9, "h": 3600 * 10**9}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", re.I)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)


def _nanoseconds(seconds: float) -> int:
    # Split first: `seconds * 1e9` of a unix time rounds 20:13:20.25 to 20:13:20.249999872.
    whole = math.floor(seconds)
    return whole * 10**9 + round((seconds - whole) * 1e9)


def go_duration(seconds: float) -> str:
    """Go's `time.Duration.String()`: 900 -> "15m0s", 1.5 -> "1.5s", 0.25 -> "250ms"."""
    ns = _nanoseconds(seconds)
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 10**9:
        for unit, size, digits in (("ns", 1, 0), ("µs", 10**3, 3), ("ms", 10**6, 6)):
            if ns < size * 1000:
                return sign + _with_fraction(ns, size, digits) + unit
    whole_s, hours = ns // 10**9, ns // (3600 * 10**9)
    minutes = whole_s // 60 % 60
    text = _with_fraction(ns % (60 * 10**9), 10**9, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _with_fraction(value: int, size: int, digits: int) -> str:
    whole, frac = divmod(value, size)
    return f"{whole}.{frac:0{digits}d}".rstrip("0") if frac else str(whole)


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string ("1h30m", "15m0s", "250ms"); ValueError otherwise."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    if body == "0":
        return 0.0
    parts = _GO_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"not a Go duration: {text!r}")
    return sign * sum(float(n) * _GO_UNITS_NS[u] for n, u in parts) / 1e9


def rfc3339(timestamp: float) -> str:
    """UTC RFC 3339 with up to nine fraction digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    seconds, frac = divmod(_nanoseconds(timestamp), 10**9)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def parse_rfc3339(text: str) -> float:
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    base, frac, zone = match.groups()
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    if zone.upper() != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return seconds + (int(frac) / 10 ** len(frac) if frac else 0.0)


def record_to_info(record: SessionRecord) -> dict:
    """The stored document of a record (a JSON-ready dict)."""
    fields = record.to_dict()
    # A Kubernetes sandbox names the object that ends with the session (a SandboxClaim or a
    # Sandbox), as upstream's records do, so its GC (and ours) delete the right one.
    handle = (record.sandbox or {}).get("handle") or {}
    info = {"kind": handle.get("kind", SANDBOX_KIND), "sandboxId": record.sandbox_id,
            "sandboxNamespace": record.namespace, "name": handle.get("name", record.template),
            "entryPoints": fields["entry_points"], "sessionId": record.session_id,
            "createdAt": rfc3339(record.created_at), "expiresAt": rfc3339(record.expires_at),
            "idleTimeout": go_duration(record.idle_timeout), "status": record.status}
    info[OURS] = {_camel(name): value for name, value in fields.items() if name not in TOP_LEVEL}
    return info


def record_from_info(info: dict, last_activity: float | None = None) -> SessionRecord:
    """Decode a stored document. `last_activity` (the activity index score) wins over the
    document's copy, which is only as fresh as the last write. Documents written by upstream
    AgentCube (no `kernelcube` object) decode from their Go-formatted fields."""
    fields = {name: info[key] for name, key in TOP_LEVEL.items() if info.get(key) is not None}
    ours = info.get(OURS)
    if isinstance(ours, dict):
        fields.update({_snake(key): value for key, value in ours.items()})
    else:
        fields["template"] = info.get("name", "")
        if info.get("createdAt"):
            fields["created_at"] = fields["last_activity"] = parse_rfc3339(info["createdAt"])
        if info.get("expiresAt"):
            fields["expires_at"] = parse_rfc3339(info["expiresAt"])
        if info.get("idleTimeout"):
            fields["idle_timeout"] = parse_go_duration(info["idleTimeout"])
    if last_activity is not None:
        fields["last_activity"] = last_activity
    return SessionRecord.from_dict(fields)
