"""Errors of the Kubernetes API and of reconcilers.

API errors are translated from HTTP statuses in `controller.kube`, so the rest of the controller
catches these classes and never a client library's. Reconcilers raise the retry errors to say how
to retry, in the way kopf's `TemporaryError`/`PermanentError` do: never `sleep` inside a reconcile.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answer of the Kubernetes API server (a `Status` object)."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or the resource) does not exist."""


class Conflict(ApiError):
    """409: a stale resourceVersion or a failed precondition; re-read and decide again."""


class AlreadyExists(Conflict):
    """409 on create: an object with that name exists."""


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


class Invalid(ApiError):
    """422: the object was rejected by validation (schema or admission)."""


def api_error(status: int, body: dict | None) -> ApiError:
    """Build the most specific error for an HTTP status and a `Status` body."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(status, reason, message)
        return Conflict(status, reason, message)
    if status == 410:
        return Gone(status, reason, message)
    if status == 422:
        return Invalid(status, reason, message)
    return ApiError(status, reason, message)


class TemporaryError(Exception):
    """A reconcile failed for a reason that may pass; retry after `delay` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """A reconcile cannot succeed until the object changes; do not retry on a timer."""
