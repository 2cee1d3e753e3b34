"""The base handler every face shares: body limit, token auth, translated errors.

Each face subclasses it and says, in `error_body`, how its dialect spells an error. Faults
raised anywhere below (unknown session, store down, sandbox gone, ...) are translated here in
one place, so no handler repeats an error dict and no body ever carries a traceback.
"""

from __future__ import annotations

import hmac
import json

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..picod_client import PicodUnreachable
from ..pool import CapacityExhausted
from ..providers import SandboxStartError
from ..sessions import SandboxGone, SessionError, SessionTaken, UnknownSession, UnknownTemplate
from ..store.base import StoreUnavailable


class GatewayError(web.HTTPError):
    """A refusal: HTTP status, a machine-readable code and a sentence saying what to do."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(status)
        self.code = code
        self.message = message
        self.extra_headers = headers or {}


def translate(exc: BaseException) -> GatewayError | None:
    """The GatewayError for a fault raised below the handlers, or None for a bug (500)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, UnknownSession):
        return GatewayError(404, "SESSION_NOT_FOUND", str(exc))
    if isinstance(exc, UnknownTemplate):
        return GatewayError(404, "TEMPLATE_NOT_FOUND", str(exc))
    if isinstance(exc, SessionTaken):
        return GatewayError(409, "SESSION_EXISTS", str(exc))
    if isinstance(exc, SandboxGone):
        return GatewayError(410, "SANDBOX_GONE", str(exc))
    if isinstance(exc, PicodUnreachable):
        if "in time" in str(exc):
            return GatewayError(504, "SANDBOX_TIMEOUT", f"the session's sandbox timed out: {exc}")
        return GatewayError(502, "SANDBOX_UNREACHABLE", f"the session's sandbox is unreachable: {exc}")
    if isinstance(exc, StoreUnavailable):
        return GatewayError(503, "STORE_UNAVAILABLE", f"{exc}; retry shortly", {"Retry-After": "2"})
    if isinstance(exc, CapacityExhausted):
        return GatewayError(503, "CAPACITY_EXHAUSTED", str(exc), {"Retry-After": "5"})
    if isinstance(exc, SandboxStartError):  # e.g. a pod that cannot be scheduled: say why
        return GatewayError(503, "SANDBOX_START_FAILED", str(exc), {"Retry-After": "10"})
    if isinstance(exc, SessionError):
        return GatewayError(400, "BAD_REQUEST", str(exc))
    return None


# A refused request's body up to this size is read and dropped, so the client's keep-alive
# connection stays usable; a larger or unsized one is not read at all and the connection closes.
DRAIN_LIMIT = 1024 * 1024


def token_valid(expected: str, handler) -> bool:
    """The request carries the gateway token (`Authorization: token|Bearer`, or `?token=`)."""
    if not expected:
        return True  # auth disabled: the gateway then listens on loopback only
    given = handler.identity_provider.get_token(handler) or ""
    return hmac.compare_digest(given.encode(), expected.encode())


@web.stream_request_body
class GatewayHandler(ExtensionHandlerMixin, JupyterHandler):
    """Auth is the gateway token (`Authorization: token|Bearer <t>` or `?token=`), never a
    cookie, so there is no cross-site request to forge and the XSRF check is off.

    Everything that can refuse a request without its body (host, size, token, the face's own
    `admit` checks, the gateway-wide body budget) runs in `prepare`, before tornado reads a byte
    of the body; only then is the body streamed in, within its reservation."""

    requires_token = True

    def initialize(self, name: str | None = None, *args, **kwargs) -> None:
        super().initialize(name, *args, **kwargs)
        self._body = bytearray()
        self._declared: int | None = 0
        self._reserved = 0
        self._dropping = False  # refused: body bytes are dropped, never kept
        self._close_connection = False

    @property
    def gateway(self):
        return self.extensionapp

    @property
    def sessions(self):
        return self.extensionapp.sessions

    def check_xsrf_cookie(self) -> None:
        return None

    async def prepare(self) -> None:
        stream = self.request.connection.stream if self.request.connection else None
        if stream is not None and not stream.closed():
            stream.set_nodelay(True)
        # jupyter-server's user and cookie machinery is skipped on purpose: these faces
        # authenticate by token (or, on the Router, by session id), and that machinery costs
        # on every call. Its Host check (against DNS rebinding) is kept.
        self.current_user = self._jupyter_current_user = None
        try:
            if not self.check_host():
                raise web.HTTPError(403)
            await self.gateway.ensure_started()
            self._declare_length()
            await self.admit()
            if self._declared and not self.gateway.body_budget.reserve(self._declared):
                raise self.too_busy()
            self._reserved = self._declared or 0
        except Exception as exc:
            self._refuse(exc)

    async def admit(self) -> None:
        """Checks that need no body, run before it is read. Default: the gateway token."""
        if self.requires_token and not self.token_ok():
            raise GatewayError(401, "UNAUTHORIZED", "a valid gateway token is required: send "
                               "'Authorization: token <token>' (or Bearer), or ?token=<token>")

    def token_ok(self) -> bool:
        return token_valid(self.gateway.token, self)

    def _declare_length(self) -> None:
        """Note the body's declared length (0 without a body; None when unsized, i.e. chunked)
        and refuse one above the limit."""
        if "Transfer-Encoding" in self.request.headers:
            self._declared = None
            return
        length = self.request.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            self._declared = None
            raise GatewayError(400, "BAD_REQUEST", "Content-Length must be a number of bytes")
        self._declared = int(length)
        if self._declared > self.gateway.max_body_bytes:
            raise self.too_large()

    def too_large(self) -> GatewayError:
        return GatewayError(413, "BODY_TOO_LARGE", f"the request body is larger than "
                            f"{self.gateway.max_body_bytes} bytes; send a smaller one (split large "
                            "files, or compress them)")

    def too_busy(self) -> GatewayError:
        return GatewayError(503, "SERVER_BUSY", "too many request bodies are in flight on this gateway; "
                            "retry shortly", {"Retry-After": "2"})

    def _refuse(self, exc: Exception) -> None:
        """Refuse before the body is read. An empty or small body is drained and dropped and the
        answer comes after it, so a keep-alive connection stays usable; a large or unsized body
        is never read: the answer goes now, says `Connection: close`, and the connection ends."""
        self._dropping = True
        if self._declared is None or self._declared > DRAIN_LIMIT:
            self._close_connection = True
            raise exc

        def answer(*args, **kwargs):
            raise exc
        setattr(self, self.request.method.lower(), answer)  # tornado calls it once the body is in

    def _refuse_midway(self, error: GatewayError) -> None:
        """Refuse while the body streams in: drop it, answer now and close the connection."""
        self._dropping = self._close_connection = True
        self._release()
        setattr(self, self.request.method.lower(), lambda *args, **kwargs: None)
        self.send_error(error.status_code, exc_info=(type(error), error, None))

    def data_received(self, chunk: bytes) -> None:
        if self._dropping or self._finished:
            return
        if len(self._body) + len(chunk) > self.gateway.max_body_bytes:
            self._refuse_midway(self.too_large())
            return
        if self._declared is None:  # unsized: reserve as it comes
            if not self.gateway.body_budget.reserve(len(chunk)):
                self._refuse_midway(self.too_busy())
                return
            self._reserved += len(chunk)
        self._body += chunk

    def _release(self) -> None:
        """Give the body's memory and its reservation back (once the request is over)."""
        if self._reserved:
            self.gateway.body_budget.release(self._reserved)
            self._reserved = 0
        self._body = bytearray()

    def on_finish(self) -> None:
        super().on_finish()
        self._release()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._release()

    @property
    def body(self) -> bytearray:
        """The request body (not a copy: read it, do not keep it past the request)."""
        return self._body

    def json_body(self, required: bool = True) -> dict:
        raw = self.body
        if not raw.strip():
            if required:
                raise GatewayError(400, "BAD_REQUEST", "the request needs a JSON object body")
            return {}
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GatewayError(400, "BAD_REQUEST", f"malformed JSON body: {exc}") from None
        except RecursionError:
            raise GatewayError(400, "BAD_REQUEST", "malformed JSON body: nested too deeply") from None
        if not isinstance(value, dict):
            raise GatewayError(400, "BAD_REQUEST", f"the body must be a JSON object, not {type(value).__name__}")
        return value

    def write_json(self, value, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    # -- errors ------------------------------------------------------------------------------

    def error_body(self, status: int, code: str, message: str) -> dict:
        """This face's error dialect. Default: {"error", "code"}."""
        return {"error": message, "code": code}

    def log_exception(self, typ, value, tb) -> None:
        error = translate(value) if value is not None else None
        if error is not None and error.status_code < 500:
            self.log.info("%s %s -> %d %s", self.request.method, self.request.path, error.status_code, error.message)
        elif error is not None:
            self.log.warning("%s %s -> %d %s", self.request.method, self.request.path, error.status_code, error.message)
        elif isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)
        else:
            self.log.error("unexpected error in %s %s", self.request.method, self.request.path,
                           exc_info=(typ, value, tb))

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = translate(exc) if exc is not None else None
        if error is not None:
            status_code = error.status_code
            kwargs["exc_info"] = (type(error), error, None)
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if self._close_connection:
            self.set_header("Connection", "close")
        if isinstance(exc, GatewayError):
            for name, value in exc.extra_headers.items():
                self.set_header(name, value)
            code, message = exc.code, exc.message
        elif isinstance(exc, web.HTTPError):
            code, message = "HTTP_ERROR", exc.log_message or self._reason
        else:
            code, message = "INTERNAL_ERROR", "internal server error"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(status_code, code, message)))

