"""`metav1.Condition` lists and RFC 3339 times, as pure functions."""

from __future__ import annotations

import datetime

UTC = datetime.timezone.utc


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    """Parse an RFC 3339 time (`Z` or an offset, with or without fractions); None if absent."""
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def find(conditions: list[dict] | None, type_: str) -> dict | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: list[dict] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def make(type_: str, status: bool | str, reason: str, message: str = "",
         generation: int | None = None) -> dict:
    if isinstance(status, bool):
        status = "True" if status else "False"
    condition = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def merge(old: list[dict] | None, new: list[dict], when: datetime.datetime,
          drop: tuple[str, ...] = ()) -> list[dict]:
    """The new conditions, keeping `lastTransitionTime` where a condition's status is unchanged.

    Conditions of other types in `old` are kept unless listed in `drop`, so the result is
    stable: merging the same inputs twice gives an equal list (no write, no watch event).
    """
    stamp = format_time(when)
    out: list[dict] = []
    seen = set()
    for condition in new:
        previous = find(old, condition["type"])
        condition = dict(condition)
        if previous is not None and previous.get("status") == condition["status"] \
                and previous.get("lastTransitionTime"):
            condition["lastTransitionTime"] = previous["lastTransitionTime"]
        else:
            condition["lastTransitionTime"] = stamp
        out.append(condition)
        seen.add(condition["type"])
    for condition in old or ():
        if condition.get("type") not in seen and condition.get("type") not in drop:
            out.append(condition)
    return out
