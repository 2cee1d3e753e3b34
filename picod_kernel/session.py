"""Jupyter messages on the wire: made, signed and split as the kernel expects them.

A message goes out as `[*identities, DELIM, signature, header, parent_header, metadata,
content, *buffers]`, the four dicts as JSON and the signature the HMAC-SHA256 (hex) of those
four frames, with the key of the kernel's connection file. What comes from the kernel is not
verified: the kernel is the only other holder of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime, timezone

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"
SIGNATURE_SCHEME = "hmac-sha256"


def new_id() -> str:
    """16 random bytes as hex, in two dash-separated chunks (as Jupyter's ids look)."""
    buf = os.urandom(16)
    return f"{buf[:4].hex()}-{buf[4:].hex()}"


def pack(obj) -> bytes:
    """Compact JSON, UTF-8, no NaN: what the kernel's JSON parser accepts."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf8", "surrogateescape")


def feed_identities(parts: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The routing identities before DELIM, and the message's frames after it."""
    idx = parts.index(DELIM)
    return parts[:idx], parts[idx + 1:]


class Session:
    """One sender's messages to a kernel: its id (in every header), its message ids, its key."""

    signature_scheme = SIGNATURE_SCHEME

    def __init__(self, key: bytes, session: str | None = None, username: str | None = None):
        self.key = key
        self.session = session or new_id()
        self.bsession = self.session.encode("ascii")
        self.username = username or os.environ.get("USER", "username")
        self._auth = hmac.new(key, digestmod=hashlib.sha256)
        self._count = 0

    def clone(self) -> Session:
        """Another sender with the same key, under a session id of its own (so that no two
        senders ever make the same message id)."""
        return Session(self.key, username=self.username)

    def msg(self, msg_type: str, content: dict | None = None, parent: dict | None = None,
            metadata: dict | None = None) -> dict:
        msg_id = f"{self.session}_{os.getpid()}_{self._count}"
        self._count += 1
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": self.username, "session": self.session,
                  "date": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                  "version": PROTOCOL_VERSION}
        return {"header": header, "msg_id": msg_id, "msg_type": msg_type,
                "parent_header": (parent.get("header", parent) if parent else {}),
                "content": {} if content is None else content, "metadata": dict(metadata or {})}

    def sign(self, frames: list[bytes]) -> bytes:
        auth = self._auth.copy()
        for frame in frames:
            auth.update(frame)
        return auth.hexdigest().encode()

    def serialize(self, msg: dict, ident: list[bytes] | bytes | None = None) -> list[bytes]:
        """The wire frames of a message (its buffers are the caller's to append)."""
        content = msg.get("content", {})
        if content is None:
            content = b"{}"
        elif isinstance(content, dict):
            content = pack(content)
        elif isinstance(content, str):
            content = content.encode("utf8")
        elif not isinstance(content, bytes):  # bytes: already packed, as in a relayed message
            raise TypeError(f"Content incorrect type: {type(content)}")
        frames = [pack(msg["header"]), pack(msg["parent_header"]), pack(msg["metadata"]), content]
        idents = ident if isinstance(ident, list) else [] if ident is None else [ident]
        return [*idents, DELIM, self.sign(frames), *frames]

    @staticmethod
    def feed_identities(parts: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        return feed_identities(parts)
