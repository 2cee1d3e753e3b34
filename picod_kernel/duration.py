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
_NUMBER = re.compile(r"\d+\.?\d*|\.\d+")
_UNIT = re.compile(r"[^\d.]*")


def parse_go_duration(text: str) -> float:
    """Return the duration in seconds, or raise ValueError with Go's wording.

    Accepts what Go accepts: an optional sign, then one or more number+unit pairs
    (`1m30s`, `1.5h`, `500ms`); `0` is the only number allowed without a unit.
    """
    original = text
    sign = -1.0 if text[:1] == "-" else 1.0
    text = text[1:] if text[:1] in "+-" else text
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0.0
    while text:
        number = _NUMBER.match(text)
        if not number:
            raise ValueError(f'time: invalid duration "{original}"')
        text = text[number.end():]
        unit = _UNIT.match(text).group()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{original}"')
        if unit not in _UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{original}"')
        total += float(number.group()) * _UNITS[unit]
        text = text[len(unit):]
    return sign * total
