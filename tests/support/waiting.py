"""Waiting for a condition in tests that drive real processes: poll, never a fixed sleep."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30.0, what: str = "", interval: float = 0.05):
    """The predicate's first truthy value; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what or predicate}"
        time.sleep(interval)
