"""Channels capabilities: signed, expiring grants to open kernels' channels WebSockets.

nbclient and papermill (jupyter_server's `GatewayKernelClient`) dial the channels WebSocket with
no header, no cookie and no query string: only the URL's path is theirs to set, through
`GatewayClient.ws_url`. A capability is a path segment that grants exactly one thing, opening
the channels of one kernel (or of any kernel, `all`) until it expires:

    <kernel id | all>.<expiry, unix seconds>.<HMAC-SHA256 of both, base64url>

It is keyed by the gateway token (changing the token revokes every capability), verified without
any state, so every replica accepts what any replica minted, and it can do nothing else: no REST
call, no new kernel, no files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid

ALL = "all"
DEFAULT_TTL = 3600.0
MAX_TTL = 7 * 24 * 3600.0
_FORM = re.compile(r"^([\w-]+)\.(\d{1,12})\.([A-Za-z0-9_-]{43})$")


def _signature(token: str, scope: str, expires: int) -> str:
    key = hmac.new(token.encode(), b"kernelcube channels capability v1", hashlib.sha256).digest()
    mac = hmac.new(key, f"{scope}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint(token: str, kernel_id: str | None, ttl: float, now: float | None = None) -> tuple[str, int]:
    """A capability for one kernel (or all, when `kernel_id` is None) and its expiry."""
    if kernel_id is not None:
        kernel_id = str(uuid.UUID(kernel_id))  # ValueError for anything but a kernel id
    expires = int((time.time() if now is None else now) + ttl)
    scope = kernel_id or ALL
    return f"{scope}.{expires}.{_signature(token, scope, expires)}", expires


def grants(token: str, capability: str, kernel_id: str, now: float | None = None) -> bool:
    """Whether `capability` opens the channels of `kernel_id` now."""
    match = _FORM.match(capability)
    if match is None:
        return False
    scope, expires, signature = match.group(1), int(match.group(2)), match.group(3)
    if scope not in (ALL, kernel_id) or expires <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _signature(token, scope, expires))
