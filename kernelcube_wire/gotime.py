"""Go's formats as AgentCube writes them in the session store: `time.Duration.String()` and
RFC 3339 with nanoseconds. Shared by the gateway (which writes records) and the controller
(whose GC reads them), neither of which may import the other.
"""

from __future__ import annotations

import calendar
import math
import re
import time

_GO_UNITS_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
                "m": 60 * 10**9, "h": 3600 * 10**9}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", re.I)


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
