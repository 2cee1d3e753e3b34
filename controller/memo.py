"""What this controller last wrote to an object's status, to skip duplicate writes.

A reconcile that runs again before the cache has seen our last status write would otherwise
write the same status twice. The memo pairs the status written with the resourceVersion the
write was based on: while the cache still shows that version, the written status is the truth.
"""

from __future__ import annotations


class StatusMemo:
    def __init__(self) -> None:
        self._memo: dict[str, tuple[str, dict]] = {}

    def current(self, obj: dict) -> dict | None:
        """The object's status as it is after our writes, even if the cache lags behind them."""
        meta = obj["metadata"]
        entry = self._memo.get(meta["uid"])
        if entry is not None and entry[0] == meta.get("resourceVersion"):
            return entry[1]
        return obj.get("status")

    def record(self, obj: dict, status: dict) -> None:
        meta = obj["metadata"]
        self._memo[meta["uid"]] = (meta.get("resourceVersion", ""), status)

    def forget(self, uid: str) -> None:
        self._memo.pop(uid, None)
