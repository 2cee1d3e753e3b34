"""The sandbox lifecycle ABC, in the manner of jupyter_client's KernelProvisionerBase."""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field

from ..templates import Template


class SandboxStartError(RuntimeError):
    """A sandbox could not be started; the message says why (with the daemon's last log lines)."""


@dataclass
class Sandbox:
    """A running sandbox. `endpoint` says how to reach its PicoD: `{"unix_socket": path}` or
    `{"url": "http://host:port"}`; `handle` is the provider's own bookkeeping; `entry_points`
    (AgentCube's `[{path, protocol, endpoint}]`) are what clients are told, when the provider
    knows better than the session manager's default."""

    id: str
    template: str
    endpoint: dict
    handle: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    entry_points: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sandbox:
        return cls(**data)


class SandboxProvider(abc.ABC):
    """Creates and destroys sandboxes. One instance per gateway.

    Pools call `create` (in the background, to refill) and `destroy` (at shutdown, for the
    unclaimed); the session manager calls `destroy` when a session ends, `lost_state` before
    each call on a session and `is_alive` when a sandbox stops answering; the app calls `sweep` at startup with the ids that sessions still
    hold, so that sandboxes left behind by a previous gateway are cleaned, and `close` at exit.
    """

    name = "abstract"

    async def start(self) -> None:  # noqa: B027 -- an optional hook
        """Called once by the app when the server starts, before sessions are re-adopted (e.g. to
        open connections and fill caches that `is_alive` reads)."""

    def readiness_problems(self) -> list[str]:
        """Why the provider cannot serve new sessions right now (for /health/ready); [] if it can."""
        return []

    @abc.abstractmethod
    async def create(self, template: Template) -> Sandbox:
        """Start a sandbox and return once its PicoD reports the kernel ready.

        Raise SandboxStartError when it cannot start; nothing may be left running then.
        Cancelling the call must also leave nothing running.
        """

    @abc.abstractmethod
    async def destroy(self, sandbox: Sandbox) -> None:
        """Stop the sandbox and remove its files. Idempotent: a gone sandbox is fine."""

    @abc.abstractmethod
    async def is_alive(self, sandbox: Sandbox) -> bool:
        """True while the sandbox's processes run."""

    def lost_state(self, sandbox: Sandbox) -> str:
        """Why a sandbox that still answers no longer holds its session's state (its container
        was restarted), or "" when it does. The session manager asks before every call on the
        session and ends the session if so: this must be cheap (a look in a cache)."""
        return ""

    @abc.abstractmethod
    async def sweep(self, keep: set[str]) -> int:
        """Destroy every sandbox of this provider whose id is not in `keep`; return how many."""

    def keep_on_exit(self, sandbox_id: str) -> None:  # noqa: B027 -- an optional hook
        """Called by the session manager when a sandbox's session is in a persistent store: that
        sandbox must survive this gateway; every other sandbox it started must not."""

    async def close(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """Release resources. Called once at gateway shutdown, after the pools are drained."""
