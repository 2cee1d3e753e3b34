"""The session record and the store ABC.

Everything about a session lives in the store, never only in one gateway's memory, so a
gateway restart or a second replica loses nothing. The Redis layout is AgentCube's
(`session:<id>`, `session:expiry`, `session:last_activity`, unix-second scores) plus one index
of our own, `session:idle_deadline` (score = last activity + idle timeout), so the reaper finds
idle sessions without the upstream starvation quirk.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field


class StoreError(Exception):
    """Base of store errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached; handlers answer 503 and the caller may retry."""


class SessionExists(StoreError):
    """create() of an id that is already stored."""


class SessionNotFound(StoreError):
    """update() of an id that is not stored."""


@dataclass
class SessionRecord:
    """One session. `sandbox` is the provider's handle (e.g. pid and socket path locally)."""

    session_id: str
    template: str
    kind: str = "code-interpreter"  # or "agent-runtime"
    namespace: str = "default"
    status: str = "ready"  # creating | ready | not-ready
    created_at: float = field(default_factory=time.time)
    expires_at: float = 0.0  # created_at + maxSessionDuration
    idle_timeout: float = 900.0  # seconds
    last_activity: float = field(default_factory=time.time)
    sandbox_id: str = ""
    provider: str = "local"
    sandbox: dict = field(default_factory=dict)
    entry_points: list[dict] = field(default_factory=list)

    @property
    def idle_deadline(self) -> float:
        return self.last_activity + self.idle_timeout

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SessionRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict:
        """What clients may see: no provider internals."""
        return {"session_id": self.session_id, "template": self.template, "kind": self.kind,
                "namespace": self.namespace, "status": self.status, "created_at": self.created_at,
                "expires_at": self.expires_at, "idle_timeout": self.idle_timeout,
                "last_activity": self.last_activity}


class SessionStore(abc.ABC):
    """Where session records live. Every method may raise StoreUnavailable.

    Called by the session manager (create, get, update, delete, touch), the reaper
    (expired, idle) and the health handler (ping). All writes that touch several keys are atomic.
    `persistent`: whether sessions outlive the gateway (their sandboxes must then survive it).
    """

    persistent = False

    @abc.abstractmethod
    async def create(self, record: SessionRecord) -> None:
        """Store a new record and index it; SessionExists if the id is taken (nothing written then)."""

    @abc.abstractmethod
    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None when unknown."""

    @abc.abstractmethod
    async def update(self, record: SessionRecord) -> None:
        """Replace an existing record (indexes follow its times); SessionNotFound if it is gone."""

    @abc.abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove the record and its index entries; False when it was not there."""

    @abc.abstractmethod
    async def touch(self, session_id: str, now: float | None = None) -> bool:
        """Set last activity to now (and move the idle deadline); False when the id is unknown."""

    @abc.abstractmethod
    async def list(self, limit: int = 1000) -> list[SessionRecord]:
        """Up to `limit` records, oldest first."""

    @abc.abstractmethod
    async def expired(self, now: float, limit: int = 100) -> list[SessionRecord]:
        """Records with expires_at <= now, soonest first, at most `limit`."""

    @abc.abstractmethod
    async def idle(self, now: float, limit: int = 100) -> list[SessionRecord]:
        """Records whose idle deadline (last_activity + idle_timeout) is <= now, at most `limit`."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""

    async def close(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """Release connections. Called once at gateway shutdown."""
