"""Sessions: claim a sandbox from a pool, record it in the store, relay calls, end it.

The store is the truth: a session lives in the store, and a gateway holds only caches (HTTP
clients, in-use counts). Every call on a session is wrapped in `use()`, which touches activity
before and after, keeps the reaper away while the call runs, and turns a dead sandbox into a
clean end of that one session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .identity import Identity
from .metrics import Metrics
from .picod_client import PeerCheckFailed, PicodClient, PicodUnreachable
from .pool import Capacity, WarmPool
from .providers import Sandbox, SandboxProvider
from .store.base import SessionExists, SessionRecord, SessionStore
from .templates import Template

log = logging.getLogger("kernelcube.sessions")

REAP_BATCH = 100


class SessionError(Exception):
    """Base of the errors each face translates into its own dialect."""


class UnknownSession(SessionError):
    def __init__(self, session_id: str):
        super().__init__(f"session {session_id!r} not found; it may have ended or been reaped")
        self.session_id = session_id


class UnknownTemplate(SessionError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"template {name!r} not found; known templates: {', '.join(sorted(known))}")
        self.name = name


class SessionTaken(SessionError):
    def __init__(self, session_id: str):
        super().__init__(f"session {session_id!r} already exists; choose another id or leave it out")
        self.session_id = session_id


class SandboxGone(SessionError):
    """The session's sandbox died; the session was ended and cleaned."""


@dataclass
class SessionHandle:
    """What a call on a session needs: the record, a client to its PicoD and a fresh token."""

    record: SessionRecord
    client: PicodClient
    token: str


class SessionManager:
    def __init__(self, store: SessionStore, provider: SandboxProvider, pools: dict[str, WarmPool],
                 templates: dict[str, Template], identity: Identity, capacity: Capacity, metrics: Metrics):
        self.store = store
        self.provider = provider
        self.pools = pools
        self.templates = templates
        self.identity = identity
        self.capacity = capacity
        self.metrics = metrics
        self._clients: dict[str, PicodClient] = {}
        self._in_use: collections.Counter[str] = collections.Counter()

    def template(self, name: str, namespace: str | None = None) -> Template:
        """The template `name`; with a `namespace`, one of that namespace (a template bound to
        another namespace is unknown there; templates of other namespaces than the first
        watched one are registered as `<namespace>/<name>`)."""
        template = self.templates.get(f"{namespace}/{name}") if namespace else None
        template = template or self.templates.get(name)
        if template is None or (namespace and template.namespace and template.namespace != namespace):
            raise UnknownTemplate(name, list(self.templates))
        return template

    async def create(self, template_name: str, *, timeout: float, namespace: str | None = None,
                     kind: str | None = None, session_id: str | None = None) -> SessionRecord:
        """Claim a sandbox and record the session; the sandbox is destroyed if recording fails.
        `session_id` is the caller's choice of id (a kernel's `KERNEL_ID`), else a new UUID."""
        template = self.template(template_name, namespace)
        template_name = template.name
        if kind is not None and template.kind != kind:
            raise UnknownTemplate(template_name, [n for n, t in self.templates.items() if t.kind == kind])
        if session_id is not None and await self.store.get(session_id) is not None:
            raise SessionTaken(session_id)  # checked before claiming: a sandbox is not wasted on it
        session_id = session_id or str(uuid.uuid4())
        started = time.monotonic()
        sandbox, path = await self.pools[template_name].claim(timeout, session_id=session_id)
        self.metrics.claim_seconds.labels(template_name, path).observe(time.monotonic() - started)
        now = time.time()
        record = SessionRecord(
            session_id=session_id, template=template_name, kind=template.kind,
            namespace=namespace or template.namespace or "default",
            created_at=now, expires_at=now + template.max_session_duration,
            idle_timeout=template.session_timeout, last_activity=now, sandbox_id=sandbox.id,
            provider=self.provider.name, sandbox=sandbox.to_dict(),
            entry_points=sandbox.entry_points or [{"path": "/", "protocol": "HTTP",
                                                   "endpoint": _describe(sandbox.endpoint)}])
        try:
            await self.store.create(record)
        except BaseException as exc:
            await self._destroy_sandbox(sandbox)
            if isinstance(exc, SessionExists):  # taken by a racing create since the check above
                raise SessionTaken(record.session_id) from None
            raise
        if self.store.persistent:
            self.provider.keep_on_exit(sandbox.id)
        self.metrics.sessions_created.labels(template_name).inc()
        log.info("session %s on sandbox %s (template %s, %s claim)", record.session_id, sandbox.id,
                 template_name, path)
        return record

    async def get(self, session_id: str) -> SessionRecord:
        record = await self.store.get(session_id)
        if record is None:
            raise UnknownSession(session_id)
        return record

    async def list(self) -> list[SessionRecord]:
        return await self.store.list()

    async def delete(self, session_id: str, reason: str = "deleted") -> None:
        """End a session: its sandbox first, then its record (so a failure leaves it reapable)."""
        record = await self.get(session_id)
        await self._end(record, reason)

    async def _end(self, record: SessionRecord, reason: str) -> None:
        await self._destroy_sandbox(Sandbox.from_dict(record.sandbox))
        self.identity.forget(record.session_id, record.sandbox_id)
        if await self.store.delete(record.session_id):
            self.metrics.sessions_ended.labels(record.template, reason).inc()
            log.info("session %s ended (%s)", record.session_id, reason)

    async def _destroy_sandbox(self, sandbox: Sandbox) -> None:
        client = self._clients.pop(sandbox.id, None)
        if client is not None:
            await client.close()
        await self.provider.destroy(sandbox)
        self.capacity.release()

    def client(self, record: SessionRecord) -> PicodClient:
        """The (cached) client to the PicoD of a session's sandbox."""
        client = self._clients.get(record.sandbox_id)
        if client is None:
            client = self._clients[record.sandbox_id] = PicodClient(record.sandbox["endpoint"])
        return client

    @contextlib.asynccontextmanager
    async def use(self, session_id: str) -> AsyncIterator[SessionHandle]:
        """Hold a session for one call. A sandbox that stopped answering and is dead ends the
        session (SandboxGone), as does one that answers but lost the session's state (its
        container restarted); one that is alive but slow is the caller's problem to report."""
        self._in_use[session_id] += 1
        try:
            if not await self.store.touch(session_id):
                raise UnknownSession(session_id)
            record = await self.get(session_id)
            lost = self.provider.lost_state(Sandbox.from_dict(record.sandbox))
            if lost:
                await self._end(record, "sandbox-restarted")
                raise SandboxGone(f"session {session_id} was ended: {lost}; start a new session")
            handle = SessionHandle(record, self.client(record),
                                   self.identity.token(record.session_id, record.sandbox_id))
            try:
                yield handle
            except PeerCheckFailed as exc:
                await self._end(record, "sandbox-replaced")
                raise SandboxGone(f"session {session_id} was ended: {exc}") from exc
            except PicodUnreachable as exc:
                if await self.provider.is_alive(Sandbox.from_dict(record.sandbox)):
                    raise
                await self._end(record, "sandbox-died")
                raise SandboxGone(f"the sandbox of session {session_id} died ({exc}); the session was "
                                  "ended and cleaned; start a new session") from exc
            await self.store.touch(session_id)
        finally:
            self._in_use[session_id] -= 1
            if self._in_use[session_id] <= 0:
                del self._in_use[session_id]

    # -- reaper ------------------------------------------------------------------------------

    async def reap_once(self, now: float | None = None) -> int:
        """End sessions past their idle timeout or max duration, at most REAP_BATCH of each."""
        now = time.time() if now is None else now
        ended = 0
        for reason, records in (("expired", await self.store.expired(now, REAP_BATCH)),
                                ("idle", await self.store.idle(now, REAP_BATCH))):
            for record in records:
                if record.session_id in self._in_use:
                    continue  # a call is running on it right now
                try:
                    await self._end(record, reason)
                    ended += 1
                except Exception:
                    log.exception("could not end session %s", record.session_id)
        return ended

    async def run_reaper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
            except Exception as exc:  # a store outage must not kill the reaper
                log.warning("reaper pass failed: %s", exc)

    # -- startup and shutdown ------------------------------------------------------------------

    async def adopt(self) -> int:
        """After a restart: keep sessions whose sandbox lives, end the others, sweep the rest."""
        keep: set[str] = set()
        for record in await self.store.list(limit=100_000):
            if record.provider != self.provider.name:
                continue
            if await self.provider.is_alive(Sandbox.from_dict(record.sandbox)):
                keep.add(record.sandbox_id)
                self.capacity.adopt()
            else:
                log.warning("session %s lost its sandbox while the gateway was down; ending it", record.session_id)
                await self.provider.destroy(Sandbox.from_dict(record.sandbox))
                await self.store.delete(record.session_id)
        await self.provider.sweep(keep)
        if keep:
            log.info("re-adopted %d session(s) from the store", len(keep))
        return len(keep)

    async def shutdown(self, end_sessions: bool) -> None:
        """Close clients; with an ephemeral store, also end every session (nothing may outlive us)."""
        if end_sessions:
            for record in await self.store.list(limit=100_000):
                await self._end(record, "gateway-stopped")
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _describe(endpoint: dict) -> str:
    """How the sandbox is reached, for clients: never a path on the gateway's host."""
    return endpoint.get("url") or "local"
