"""Parse Go `time.ParseDuration` strings, the timeout format of upstream PicoD's API."""

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PAIR = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)?")


def parse_go_duration(text: str) -> float:
    """Return the duration in seconds, or raise ValueError with Go's wording.

    Accepts what Go accepts: an optional sign, then one or more number+unit pairs
    (`1m30s`, `1.5h`, `500ms`); `0` is the only number allowed without a unit.
    """
    original = text
    sign = 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if not match:
            raise ValueError(f'time: invalid duration "{original}"')
        number, unit = match.groups()
        if unit is None:
            rest = text[match.end():]
            if rest:
                raise ValueError(f'time: unknown unit "{rest.split()[0][:8]}" in duration "{original}"')
            raise ValueError(f'time: missing unit in duration "{original}"')
        total += float(number) * _UNITS[unit]
        pos = match.end()
    return sign * total
