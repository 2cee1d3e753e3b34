"""SessionRecord <-> the JSON document stored at `session:<id>`.

The document is AgentCube's `SandboxInfo` where the two overlap, so upstream tools reading the
same Redis see familiar fields (RFC 3339 times, a Go duration for the idle timeout). Go's
formats lose precision and have no place for our own fields, so the `kernelcube` sub-object
carries every other record field, times as plain unix seconds: decoding reads it first, and
`record_from_info(record_to_info(r)) == r` holds exactly.
"""

from __future__ import annotations

import re

from kernelcube_wire.gotime import go_duration, parse_go_duration, parse_rfc3339, rfc3339

from .base import SessionRecord

__all__ = ["go_duration", "parse_go_duration", "parse_rfc3339", "record_from_info", "record_to_info", "rfc3339"]

# Record fields that live only at the top level, under AgentCube's names.
TOP_LEVEL = {"session_id": "sessionId", "namespace": "sandboxNamespace",
             "sandbox_id": "sandboxId", "status": "status", "entry_points": "entryPoints"}
OURS = "kernelcube"
SANDBOX_KIND = "Sandbox"  # AgentCube's kind for a directly created sandbox (vs SandboxClaim)

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)


def record_to_info(record: SessionRecord) -> dict:
    """The stored document of a record (a JSON-ready dict)."""
    fields = record.to_dict()
    # A Kubernetes sandbox names the object that ends with the session (a SandboxClaim or a
    # Sandbox), as upstream's records do, so its GC (and ours) delete the right one.
    handle = (record.sandbox or {}).get("handle") or {}
    info = {"kind": handle.get("kind", SANDBOX_KIND), "sandboxId": record.sandbox_id,
            "sandboxNamespace": record.namespace, "name": handle.get("name", record.template),
            "entryPoints": fields["entry_points"], "sessionId": record.session_id,
            "createdAt": rfc3339(record.created_at), "expiresAt": rfc3339(record.expires_at),
            "idleTimeout": go_duration(record.idle_timeout), "status": record.status}
    info[OURS] = {_camel(name): value for name, value in fields.items() if name not in TOP_LEVEL}
    return info


def record_from_info(info: dict, last_activity: float | None = None) -> SessionRecord:
    """Decode a stored document. `last_activity` (the activity index score) wins over the
    document's copy, which is only as fresh as the last write. Documents written by upstream
    AgentCube (no `kernelcube` object) decode from their Go-formatted fields."""
    fields = {name: info[key] for name, key in TOP_LEVEL.items() if info.get(key) is not None}
    ours = info.get(OURS)
    if isinstance(ours, dict):
        fields.update({_snake(key): value for key, value in ours.items()})
    else:
        fields["template"] = info.get("name", "")
        if info.get("createdAt"):
            fields["created_at"] = fields["last_activity"] = parse_rfc3339(info["createdAt"])
        if info.get("expiresAt"):
            fields["expires_at"] = parse_rfc3339(info["expiresAt"])
        if info.get("idleTimeout"):
            fields["idle_timeout"] = parse_go_duration(info["idleTimeout"])
    if last_activity is not None:
        fields["last_activity"] = last_activity
    return SessionRecord.from_dict(fields)
