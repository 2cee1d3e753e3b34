"""Go duration strings: what upstream PicoD accepts as `timeout`, and what it refuses."""

import pytest

from picod_kernel.duration import parse_go_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("120s", 120), ("30.5s", 30.5), ("500ms", 0.5), ("1m30s", 90), ("1.5h", 5400),
    ("250us", 250e-6), ("250\u00b5s", 250e-6), ("250\u03bcs", 250e-6), ("10ns", 10e-9),
    ("+5s", 5), ("0", 0), ("0s", 0), ("-1s", -1), (".5s", 0.5), ("1h2m3s4ms", 3723.004),
])
def test_valid(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "wording"), [
    ("120", "missing unit"), ("5 s", "unknown unit"), ("5S", "unknown unit"),
    ("5sec", "unknown unit"), ("abc", "invalid duration"), ("", "invalid duration"),
    ("-", "invalid duration"), ("1.2.3s", "missing unit"),
])
def test_invalid(text, wording):
    with pytest.raises(ValueError, match=wording):
        parse_go_duration(text)
