"""Session stores: MemoryStore (embedded default) and RedisStore (shared by replicas)."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import (
    SessionExists,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    StoreError,
    StoreUnavailable,
)
from .memory import MemoryStore
from .redis import RedisStore, redact

REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = ["MemoryStore", "RedisStore", "SessionExists", "SessionNotFound", "SessionRecord",
           "SessionStore", "StoreError", "StoreUnavailable", "make_store"]


def make_store(url: str | None, prefix: str = "") -> SessionStore:
    """The store a URL names: None, "" or "memory" for MemoryStore; redis://, rediss:// or
    unix:// for RedisStore (with `prefix` in front of every key)."""
    if not url or url.strip().lower() == "memory":
        return MemoryStore()
    if urlsplit(url).scheme.lower() in REDIS_SCHEMES:
        return RedisStore(url, prefix)
    raise ValueError(f"unknown session store {redact(url)!r}: use 'memory', or a Redis URL "
                     "such as redis://host:6379/0, rediss://host:6380/0 or "
                     "unix:///run/redis.sock?db=0")
