"""The client's exceptions, one per kind of refusal, each carrying the gateway's own message.

`error_for(status, body)` is the single place an HTTP answer becomes an exception: the
gateway's error bodies are `{"error", "code"}` (execute API), `{"error"}` (Router) or
`{"message"}` (Workload Manager).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Execution


class KernelCubeError(Exception):
    """Anything the gateway refused or could not do. `status` and `code` are the HTTP status and
    the gateway's machine-readable code when there was an answer (None for a transport error)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class AuthenticationError(KernelCubeError):
    """401: the gateway token is missing or wrong (`token=` or `KERNELCUBE_TOKEN`)."""


class SessionNotFound(KernelCubeError):
    """404 for a session: it never existed, was deleted, or was reaped after its idle timeout."""


class TemplateNotFound(KernelCubeError):
    """404 for a template (`template=`) the gateway does not define."""


class RemoteFileNotFound(KernelCubeError, FileNotFoundError):
    """404 for a path in the session's workspace."""


class InvalidRequest(KernelCubeError, ValueError):
    """400 or 413: the request itself was wrong (the message says which part)."""


class CapacityError(KernelCubeError):
    """503 or 429: no sandbox, store or slot is free right now; `retry_after` says when to retry."""


class SandboxError(KernelCubeError):
    """The session's sandbox failed: unreachable (502), too slow to answer (504), or gone (410)."""


class SandboxGone(SandboxError):
    """410: the session's sandbox died; the session cannot be used again."""


class ExecutionTimeout(KernelCubeError):
    """The code ran past its timeout and was interrupted; the session and its variables are kept.
    `execution` holds what the code produced until then (None when the client gave up waiting)."""

    def __init__(self, message: str, *, execution: Execution | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.execution = execution


class CommandExecutionError(KernelCubeError):
    """A command exited non-zero (as the agentcube-sdk raises it): `exit_code`, `stderr`, `command`."""

    def __init__(self, exit_code: int, stderr: str, command: str | list[str], stdout: str = ""):
        super().__init__(f"command {command!r} exited with {exit_code}: {stderr.strip()[-2000:]}")
        self.exit_code = exit_code
        self.stderr = stderr
        self.stdout = stdout
        self.command = command


def _message(body: bytes) -> tuple[str, str | None]:
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500], None
    if not isinstance(value, dict):
        return str(value)[:500], None
    message = value.get("error") or value.get("message") or value.get("reason") or json.dumps(value)[:500]
    code = value.get("code")
    return str(message), code if isinstance(code, str) else None


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


def error_for(status: int, body: bytes, headers=None, *, about: str = "") -> KernelCubeError:
    """The exception for an error answer; `about` says what was asked ("session", "file", ...),
    for a 404 whose body names no code. "relayed file" is a file call through the Router, which
    echoes `x-agentcube-session-id` on every answer it relays from the sandbox and refuses an
    unknown session itself, without it."""
    message, code = _message(body)
    if about == "relayed file":
        about = "file" if "x-agentcube-session-id" in (headers or {}) else "session"
    kwargs = {"status": status, "code": code, "retry_after": _retry_after(headers or {})}
    if status == 401 or status == 403:
        return AuthenticationError(message, **kwargs)
    if status == 404:
        if code == "SESSION_NOT_FOUND" or (code is None and about == "session"):
            return SessionNotFound(message, **kwargs)
        if code == "TEMPLATE_NOT_FOUND":
            return TemplateNotFound(message, **kwargs)
        if code == "FILE_NOT_FOUND" or about == "file":
            return RemoteFileNotFound(message, **kwargs)
        return KernelCubeError(message, **kwargs)
    if status == 410:
        return SandboxGone(message, **kwargs)
    if status in (400, 413, 422):
        return InvalidRequest(message, **kwargs)
    if status in (429, 503):
        return CapacityError(message, **kwargs)
    if status in (502, 504):
        return SandboxError(message, **kwargs)
    if 300 <= status < 400:
        location = (headers or {}).get("Location", "")
        return KernelCubeError(f"the gateway answered {status}, a redirect to {location!r}; redirects are not "
                               "followed: point the client at the gateway's own URL", **kwargs)
    return KernelCubeError(f"the gateway answered {status}: {message}", **kwargs)
