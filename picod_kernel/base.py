"""The base handler: body limit, JWT auth and PicoD's JSON error bodies, in upstream's order.

Bodies are streamed in so that an oversized one is refused with 413 as soon as it shows, for
Content-Length and chunked bodies alike, and before authentication (as upstream).
"""

from __future__ import annotations

import json
import logging

from tornado import web

from .auth import AuthError
from .limits import MAX_BODY_BYTES

log = logging.getLogger("picod.http")

TOO_LARGE = {"error": "request body too large", "detail": f"maximum allowed size is {MAX_BODY_BYTES} bytes"}


class RequestError(web.HTTPError):
    """A refusal with a status and PicoD's `{"error", "code"}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(status)
        self.message = message


def set_nodelay(handler: web.RequestHandler) -> None:
    # Nagle plus delayed ACK adds ~40 ms to small request/response exchanges.
    stream = handler.request.connection.stream if handler.request.connection else None
    if stream is not None and not stream.closed():
        stream.set_nodelay(True)


@web.stream_request_body
class PicodHandler(web.RequestHandler):
    requires_auth = True

    def initialize(self, state) -> None:
        self.state = state
        self._body = bytearray()
        self._too_large = False

    def set_default_headers(self) -> None:
        self.set_header("Server", "PicoD")

    def prepare(self) -> None:
        # Per request: tornado turns Nagle back on after each response on a kept-alive connection.
        set_nodelay(self)
        method = self.request.method.lower()
        if getattr(type(self), method, None) is getattr(web.RequestHandler, method, None):
            self.send_error(405)  # answered as gin does, before auth: see write_error
            return
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._refuse_too_large()
            return
        if self.requires_auth:
            try:
                self.claims = self.state.verifier.verify(self.request.headers.get("Authorization"))
            except AuthError as exc:
                self.set_status(401)
                self.finish({"error": exc.error, "code": 401, "detail": exc.detail})

    def _refuse_too_large(self) -> None:
        self._too_large = True
        self.set_status(413)
        self.finish(TOO_LARGE)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        if len(self._body) + len(chunk) > MAX_BODY_BYTES:
            self._body = bytearray()
            self._refuse_too_large()
            return
        self._body += chunk

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def json_body(self) -> dict:
        try:
            value = json.loads(self._body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"invalid JSON body: {exc}") from None
        except RecursionError:
            raise RequestError(400, "invalid JSON body: nested too deeply") from None
        if not isinstance(value, dict):
            raise RequestError(400, f"the body must be a JSON object, not {type(value).__name__ if value is not None else 'empty'}")
        return value

    def write_json(self, value: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(value))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, RequestError):
            log.info("%s %s -> %s: %s", self.request.method, self.request.path, value.status_code, value.message)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405:  # upstream (gin) answers a wrong method like an unknown path
            self.set_status(404)
            self.set_header("Content-Type", "text/plain")
            self.finish("404 page not found")
            return
        if isinstance(exc, RequestError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = self._reason if status_code != 500 else "internal server error"
        self.write_json({"error": message, "code": status_code}, status_code)


class NotFoundHandler(web.RequestHandler):
    """gin's default answer for an unknown route: plain text, no auth."""

    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain")
        self.finish("404 page not found")
