"""Session garbage collection over the shared Redis store: a loop of the leading controller.

Each pass (every `gc_interval`, bounded by `gc_pass_timeout`):

1. **Due sessions.** Up to `gc_batch` ids from the idle-deadline index and as many from the
   expiry index (index range queries, so the cost follows the due, not the total). For each,
   the session's SandboxClaim or Sandbox is deleted (NotFound is fine), and only then its
   record: a failed delete leaves the record for the next pass. `gc_concurrency` at once.
2. **Orphan records.** The next `gc_sweep_batch` records of a cursor that walks the whole
   store across passes: a record older than `gc_orphan_grace` whose objects are all gone is
   deleted. The same walk finds records written without the deadline index (by an upstream
   WM) that are idle, and collects them.
3. **Orphan workloads.** The next `gc_sweep_batch` session ids labelled on cached Sandboxes and
   SandboxClaims: objects older than the grace whose record is gone are deleted.

Objects are found from the informer caches (the label `runtime.agentcube.io/session-id`, and
the names a record declares; see `gc_logic`). Every action is logged and counted in metrics.
The gateway's own reaper may race with this one: every step is idempotent.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from dataclasses import dataclass, field

from controller import conditions as cond
from controller import gc_logic as logic
from controller import naming as n
from controller.context import Context
from controller.resources import CLAIMS, SANDBOXES
from controller.sandbox_logic import controller_of
from controller.session_store import SessionIndex

log = logging.getLogger(__name__)


def _session_label(obj: dict) -> list[str]:
    value = (obj["metadata"].get("labels") or {}).get(n.SESSION_ID)
    return [value] if value else []


@dataclass
class PassReport:
    idle: int = 0
    expired: int = 0
    orphan_records: int = 0
    orphan_workloads: int = 0
    stale_index: int = 0
    errors: int = 0
    seconds: float = 0.0
    complete: bool = True
    collected: list[str] = field(default_factory=list)


class SessionCollector:
    def __init__(self, ctx: Context, metrics, store: SessionIndex | None = None) -> None:
        self.ctx = ctx
        self.metrics = metrics
        s = ctx.settings
        self.store = store or SessionIndex(s.redis_url, s.redis_prefix)
        self._owns_store = store is None
        self._record_cursor: tuple[float, str] | None = None
        self._workload_cursor = ""
        self._task: asyncio.Task | None = None
        self.passes = 0
        for inf in (ctx.sandboxes, ctx.claims):
            if not inf.has_index("session"):  # a new term's informers, or a second collector
                inf.add_index("session", _session_label)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._owns_store:
            await self.store.close()

    async def _loop(self) -> None:
        interval = self.ctx.settings.gc_interval
        log.info("session GC running every %.0fs over Redis", interval)
        while True:
            # First pass one interval after taking the lead (upstream's ticker), by which time
            # a gateway restarted alongside has touched its live sessions.
            await asyncio.sleep(interval)
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis down, API errors: log, count, try again next interval
                self.metrics.gc_errors.inc()
                log.exception("session GC pass failed")

    # -- one pass ---------------------------------------------------------------------------

    async def run_pass(self, now: float | None = None) -> PassReport:
        s = self.ctx.settings
        now = time.time() if now is None else now
        report = PassReport()
        started = time.monotonic()
        try:
            async with asyncio.timeout(s.gc_pass_timeout):
                await self._collect_due(now, report)
                if s.gc_sweep_batch > 0:
                    await self._sweep_records(now, report)
                    await self._sweep_workloads(now, report)
        except TimeoutError:
            report.complete = False
            log.warning("session GC pass stopped at its %.0fs budget; it resumes next pass",
                        s.gc_pass_timeout)
        report.seconds = time.monotonic() - started
        self.passes += 1
        self.metrics.gc_pass_seconds.observe(report.seconds)
        if report.idle or report.expired or report.orphan_records or report.orphan_workloads \
                or report.errors or report.stale_index:
            log.info("session GC pass: %d idle, %d expired, %d orphan records, %d orphan "
                     "workloads, %d stale index entries, %d errors in %.3fs", report.idle,
                     report.expired, report.orphan_records, report.orphan_workloads,
                     report.stale_index, report.errors, report.seconds)
        return report

    async def _collect_due(self, now: float, report: PassReport) -> None:
        s = self.ctx.settings
        seen: set[str] = set()
        due: list[tuple[logic.Session, str]] = []
        for index in (self.store.deadline_key, self.store.expiry_key):
            found, offset = 0, 0
            # Records that are not ours (local sandboxes) are skipped, not counted: page on
            # so they cannot hide collectable ones behind them (a few pages at most).
            for _ in range(5):
                ids = await self.store.due(index, now, offset, s.gc_batch)
                offset += len(ids)
                fresh = [sid for sid in ids if sid not in seen]
                seen.update(fresh)
                fetched = await self.store.fetch(fresh)
                gone = [f.session_id for f in fetched if f.info is None]
                if gone:
                    report.stale_index += await self.store.prune(gone)
                for f in fetched:
                    if f.info is None:
                        continue
                    session = self._decode(f)
                    reason = logic.due_reason(session, now)
                    if session.ours and reason is not None:
                        due.append((session, reason))
                        found += 1
                if found >= s.gc_batch or len(ids) < s.gc_batch:
                    break
        await self._bounded(self._collect(session, reason, report) for session, reason in due)

    def _decode(self, f) -> logic.Session:
        return logic.session_from(f.session_id, f.info, f.last_activity, f.deadline,
                                  self.ctx.settings.gc_default_idle_timeout)

    async def _bounded(self, coroutines) -> None:
        limit = asyncio.Semaphore(self.ctx.settings.gc_concurrency)

        async def run(coro) -> None:
            async with limit:
                await coro

        await asyncio.gather(*(run(c) for c in coroutines))

    async def _collect(self, session: logic.Session, reason: str, report: PassReport) -> None:
        """Delete a due session's objects, then its record."""
        if not await self._delete_workloads(session.session_id, session.declared, reason):
            report.errors += 1
            return
        await self.store.delete(session.session_id)
        setattr(report, reason, getattr(report, reason) + 1)
        report.collected.append(session.session_id)
        self.metrics.gc_sessions.labels(reason).inc()
        log.info("session %s collected (%s): workload and record deleted", session.session_id,
                 reason)

    def _workloads(self, session_id: str, declared: tuple[logic.Workload, ...]
                   ) -> list[tuple[logic.Workload, str | None, dict | None]]:
        """The session's objects known to the cache (labelled or declared), with the claim
        controlling each; declared ones missing from the cache are listed without an object."""
        out: dict[logic.Workload, tuple[str | None, dict | None]] = {}
        for kind, cache in (("SandboxClaim", self.ctx.claims), ("Sandbox", self.ctx.sandboxes)):
            for obj in cache.by_index("session", session_id):
                meta = obj["metadata"]
                ref = controller_of(obj)
                owner = ref["name"] if ref and ref.get("kind") == "SandboxClaim" else None
                out[logic.Workload(kind, meta["namespace"], meta["name"])] = (owner, obj)
        for w in declared:
            if w not in out:
                cache = self.ctx.claims if w.kind == "SandboxClaim" else self.ctx.sandboxes
                obj = cache.get(w.namespace, w.name)
                ref = controller_of(obj) if obj else None
                owner = ref["name"] if ref and ref.get("kind") == "SandboxClaim" else None
                out[w] = (owner, obj)
        return [(w, owner, obj) for w, (owner, obj) in out.items()]

    async def _delete_workloads(self, session_id: str, declared: tuple[logic.Workload, ...],
                                reason: str) -> bool:
        found = self._workloads(session_id, declared)
        ok = True
        for w in logic.to_delete([(w, owner) for w, owner, _ in found]):
            res = CLAIMS if w.kind == "SandboxClaim" else SANDBOXES
            try:
                # Background propagation: a claim's Sandbox and Pod follow it through GC.
                if await self.ctx.kube.delete(res, w.namespace, w.name, propagation="Background"):
                    self.metrics.gc_workloads.labels(w.kind, reason).inc()
                    log.info("session %s: deleted %s %s/%s (%s)", session_id, w.kind,
                             w.namespace, w.name, reason)
            except Exception as exc:  # any API failure: retried next pass
                ok = False
                self.metrics.gc_errors.inc()
                log.warning("session %s: deleting %s %s/%s failed (retried next pass): %s",
                            session_id, w.kind, w.namespace, w.name, exc)
        return ok

    # -- orphans ----------------------------------------------------------------------------

    async def _sweep_records(self, now: float, report: PassReport) -> None:
        """Records whose objects are gone; records outside the deadline index that are idle."""
        s = self.ctx.settings
        ids, self._record_cursor = await self.store.sweep_page(self._record_cursor,
                                                               s.gc_sweep_batch)
        work = []
        for f in await self.store.fetch(ids):
            if f.info is None:
                continue
            session = self._decode(f)
            if not session.ours:
                continue
            reason = logic.due_reason(session, now)
            if reason is not None and f.deadline is None:
                work.append(self._collect(session, reason, report))
                continue
            if now - session.created_at < s.gc_orphan_grace:
                continue  # may still be starting: its objects may not be in the cache yet
            found = self._workloads(session.session_id, session.declared)
            if not found or any(obj is not None for _, _, obj in found):
                continue  # alive, or nothing is known of its objects: leave it to expiry
            work.append(self._orphan_record(session, report))
        await self._bounded(work)

    async def _orphan_record(self, session: logic.Session, report: PassReport) -> None:
        if await self.store.delete(session.session_id):
            report.orphan_records += 1
            self.metrics.gc_orphans.labels("record").inc()
            log.info("session %s: record deleted, its %s no longer exists", session.session_id,
                     ", ".join(f"{w.kind} {w.namespace}/{w.name}" for w in session.declared))

    async def _sweep_workloads(self, now: float, report: PassReport) -> None:
        """Session-labelled Sandboxes and claims older than the grace whose record is gone."""
        s = self.ctx.settings
        ids = sorted(set(self.ctx.claims.index_values("session"))
                     | set(self.ctx.sandboxes.index_values("session")))
        start = bisect.bisect_right(ids, self._workload_cursor) if self._workload_cursor else 0
        batch = ids[start:start + s.gc_sweep_batch]
        self._workload_cursor = batch[-1] if len(batch) == s.gc_sweep_batch else ""
        old_enough = []
        for sid in batch:
            found = self._workloads(sid, ())
            if any(now - _created(obj) >= s.gc_orphan_grace
                   and not obj["metadata"].get("deletionTimestamp")
                   for _, _, obj in found if obj is not None):
                old_enough.append(sid)
        exists = await self.store.exist(old_enough)
        orphans = [sid for sid, alive in zip(old_enough, exists, strict=True) if not alive]
        await self._bounded(self._orphan_workload(sid, report) for sid in orphans)

    async def _orphan_workload(self, session_id: str, report: PassReport) -> None:
        if await self._delete_workloads(session_id, (), "orphan"):
            report.orphan_workloads += 1
            self.metrics.gc_orphans.labels("workload").inc()
            log.info("session %s: no record in the store; its objects were deleted", session_id)
        else:
            report.errors += 1


def _created(obj: dict) -> float:
    """When the object became a session's: its creation, or, for a warm Sandbox that a gateway
    took long after it was made, the moment it was taken (so a session whose record is being
    written right now is never mistaken for an orphan)."""
    meta = obj["metadata"]
    moments = [cond.parse_time(meta.get("creationTimestamp")),
               cond.parse_time((meta.get("annotations") or {}).get(n.SESSION_STARTED_AT))]
    found = [m.timestamp() for m in moments if m is not None]
    return max(found) if found else time.time()

