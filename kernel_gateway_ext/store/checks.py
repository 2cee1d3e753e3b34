"""Checks every store applies before a write, so switching stores never changes behaviour."""

from __future__ import annotations

from .base import SessionRecord

# Ids that would collide with the Redis index keys (`session:expiry`, ...).
RESERVED_IDS = frozenset({"expiry", "last_activity", "idle_deadline"})


def check_writable(record: SessionRecord) -> None:
    """ValueError for a record no store may hold: an empty or reserved id, or no expiry.

    An unset expiry (0) would put the session at the head of the expiry index and have the
    reaper end it at once; AgentCube's store refuses it too.
    """
    if not record.session_id or record.session_id in RESERVED_IDS:
        raise ValueError(f"invalid session id {record.session_id!r}: it must be non-empty and "
                         f"not one of {sorted(RESERVED_IDS)}")
    if not record.expires_at > 0:
        raise ValueError(f"session {record.session_id}: expires_at must be set (got "
                         f"{record.expires_at!r}); use created_at + maxSessionDuration")
