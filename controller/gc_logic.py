"""Pure decisions of the session garbage collector (agentcube-api.md §4, §5): reading a session
record, whether it is due, which Kubernetes objects belong to it, whether it is an orphan.

The record layout is AgentCube's `SandboxInfo` JSON as the gateway writes it
(`kernel_gateway_ext/store/sandbox_info.py`): upstream's top-level fields, plus a `kernelcube`
sub-object with the gateway's own fields. The controller may not import the gateway, and only
needs a few fields, so it reads them here. Which objects a session owns:

- a record written by upstream AgentCube's WM (no `kernelcube` object): top-level `kind`
  (`Sandbox` or `SandboxClaim`), `name`, `sandboxNamespace`;
- a record of KernelCube's Kubernetes backend (`kernelcube.provider == "kubernetes"`): the
  handle `kernelcube.sandbox` — `{"kind", "name", "namespace"}`, and optionally `"claim"` (a
  SandboxClaim name) — when present;
- in both cases, any Sandbox or SandboxClaim labelled `runtime.agentcube.io/session-id=<id>`.

Records of other providers (the gateway's local sandboxes) are not the controller's to collect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernelcube_wire.gotime import parse_go_duration, parse_rfc3339

OURS = "kernelcube"
KUBERNETES_PROVIDER = "kubernetes"
WORKLOAD_KINDS = ("Sandbox", "SandboxClaim")


@dataclass(frozen=True)
class Workload:
    kind: str  # Sandbox | SandboxClaim
    namespace: str
    name: str


@dataclass
class Session:
    """What the collector needs of one record."""

    session_id: str
    ours: bool  # the controller may collect it (Kubernetes backend or upstream WM)
    namespace: str
    created_at: float
    expires_at: float
    idle_deadline: float | None  # None: not in the deadline index and not computable
    status: str
    declared: tuple[Workload, ...] = field(default_factory=tuple)


def _time(info: dict, ours: dict, our_key: str, key: str) -> float:
    if isinstance(ours.get(our_key), (int, float)):
        return float(ours[our_key])
    try:
        return parse_rfc3339(info[key]) if info.get(key) else 0.0
    except ValueError:
        return 0.0


def session_from(session_id: str, info: dict, last_activity: float | None,
                 deadline: float | None, default_idle: float) -> Session:
    """Decode a record. The deadline index wins; otherwise (a record written by upstream, which
    has no such index) it is computed as upstream's GC does: last activity (or creation) plus
    the record's idle timeout."""
    ours = info.get(OURS) if isinstance(info.get(OURS), dict) else None
    sub = ours or {}
    namespace = str(info.get("sandboxNamespace") or sub.get("namespace") or "default")
    declared: list[Workload] = []
    if ours is None:
        if info.get("kind") in WORKLOAD_KINDS and info.get("name"):
            declared.append(Workload(info["kind"], namespace, str(info["name"])))
        collectable = True
    else:
        collectable = sub.get("provider") == KUBERNETES_PROVIDER
        handle = sub.get("sandbox") if isinstance(sub.get("sandbox"), dict) else {}
        if isinstance(handle.get("handle"), dict):  # the gateway's Sandbox: {id, endpoint, handle, ...}
            handle = handle["handle"]
        ns = str(handle.get("namespace") or namespace)
        if handle.get("name"):
            kind = handle.get("kind") if handle.get("kind") in WORKLOAD_KINDS else "Sandbox"
            declared.append(Workload(kind, ns, str(handle["name"])))
        if handle.get("claim"):
            declared.append(Workload("SandboxClaim", ns, str(handle["claim"])))
    created = _time(info, sub, "createdAt", "createdAt")
    if deadline is None:
        idle = sub.get("idleTimeout")
        try:
            timeout = float(idle) if isinstance(idle, (int, float)) else \
                parse_go_duration(info["idleTimeout"]) if info.get("idleTimeout") else default_idle
        except ValueError:
            timeout = default_idle
        base = last_activity if last_activity is not None else created
        deadline = base + timeout if base else None
    return Session(session_id, collectable, namespace, created,
                   _time(info, sub, "expiresAt", "expiresAt"), deadline,
                   str(info.get("status") or sub.get("status") or ""), tuple(declared))


def due_reason(session: Session, now: float) -> str | None:
    """"expired" (past maxSessionDuration), "idle" (past its idle deadline), or None."""
    if session.expires_at and session.expires_at <= now:
        return "expired"
    if session.idle_deadline is not None and session.idle_deadline <= now:
        return "idle"
    return None


def to_delete(found: list[tuple[Workload, str | None]]) -> list[Workload]:
    """The objects to delete for a session, claims first. A Sandbox controlled by one of these
    claims goes with its claim (garbage collection), so it is not deleted separately.

    `found`: each workload with the name of the SandboxClaim controlling it (or None).
    """
    claims = {w.name for w, _ in found if w.kind == "SandboxClaim"}
    out = sorted({w for w, _ in found if w.kind == "SandboxClaim"}, key=lambda w: w.name)
    out += sorted({w for w, owner in found if w.kind == "Sandbox" and owner not in claims},
                  key=lambda w: w.name)
    return out
