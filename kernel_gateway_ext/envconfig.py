"""Reading `KERNELCUBE_*` environment variables into trait defaults, failing with one clear line.

A bad value is a `ConfigError` naming the variable and saying what it expects. It is a
`TraitError`, so jupyter-server's launch reports it as bad configuration and exits non-zero
before it serves anything.
"""

from __future__ import annotations

import json
import os

from traitlets import TraitError


class ConfigError(TraitError):
    """A setting that cannot be used; the message names it and says what would work."""


def env_str(name: str, fallback: str = "") -> str:
    return os.environ.get(name, fallback)


def env_int(name: str, fallback: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return fallback
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number (e.g. {name}={fallback})") from None


def env_bool(name: str, fallback: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return fallback
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true or false)")


def env_float(name: str, fallback: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return fallback
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds (e.g. {name}={fallback:g})") from None


def env_json_object(name: str) -> dict:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc}); object keys and strings need double "
                          f"quotes and booleans are lower case, e.g. {name}='{{\"net\": {{\"network\": true}}}}'"
                          ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object mapping template names to templates, "
                          f"not a {type(value).__name__}")
    return value
