"""KernelCube's own HTTP execute API: `/v1/sessions`, `/v1/execute` (JSON or NDJSON) and files.

Python runs in the session's live kernel, so state persists between calls; `bash` runs as one
command in the sandbox. Without a `session_id` a session is created and kept, so the next call
can reuse it (the idle timeout applies). Bodies with fields the API does not know are refused,
so a misspelt `sesion_id` is an error rather than a silently new session. The accepted fields
are the ones `openapi.json` documents (a test holds them equal).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from urllib.parse import quote

import aiohttp

from .base import GatewayError, GatewayHandler

NDJSON = "application/x-ndjson"
LANGUAGES = ("python", "bash")
SESSION_HEADER = "X-Session-Id"
SESSION_FIELDS = ("template", "timeout")
EXECUTE_FIELDS = ("code", "language", "session_id", "template", "timeout", "env", "ansi")
# CSI sequences (colours, cursor moves) and OSC sequences (titles, links), as IPython emits them.
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def _only_known_fields(body: dict, accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(accepted))
    if unknown:
        raise GatewayError(400, "BAD_REQUEST", f"unknown field(s) {', '.join(map(repr, unknown))}; "
                           f"accepted fields: {', '.join(accepted)}")


def _not_agent_runtime(kind: str, name: str) -> None:
    """Agent runtimes run the user's agent, not code: they are reached through the Router. A
    session is judged by its record (its template may be gone meanwhile, as a deleted CR is)."""
    if kind == "agent-runtime":
        raise GatewayError(400, "WRONG_API", f"template {name!r} is an agent runtime, which runs "
                           "an agent rather than code: call it through the Router at "
                           f"/v1/namespaces/<namespace>/agent-runtimes/{name}/invocations/<path>")


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def _plain_error(error: dict | None) -> dict | None:
    """An error (name, value, traceback) without ANSI escape sequences."""
    if not error:
        return error
    plain = dict(error)
    for key in ("name", "value"):
        if isinstance(plain.get(key), str):
            plain[key] = strip_ansi(plain[key])
    if isinstance(plain.get("traceback"), list):
        plain["traceback"] = [strip_ansi(line) if isinstance(line, str) else line for line in plain["traceback"]]
    return plain


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GatewayError(400, "BAD_REQUEST", f"'{key}' must be a positive number of seconds")
    return float(value)


def _string_map(body: dict, key: str) -> dict:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise GatewayError(400, "BAD_REQUEST", f"'{key}' must be an object mapping strings to strings")
    return value


class SessionsHandler(GatewayHandler):
    """POST creates a session (201 + Location); GET lists them."""

    async def post(self) -> None:
        body = self.json_body(required=False)
        _only_known_fields(body, SESSION_FIELDS)
        template = body.get("template", "default")
        if not isinstance(template, str):
            raise GatewayError(400, "BAD_REQUEST", "'template' must be a string")
        # How long the claim may wait for a sandbox when the template's pool is empty.
        timeout = _number(body, "timeout") or self.gateway.claim_timeout
        record = await self.sessions.create(template, timeout=timeout)
        self.set_header("Location", f"{self.base_url.rstrip('/')}/v1/sessions/{record.session_id}")
        self.set_header(SESSION_HEADER, record.session_id)
        self.write_json({"session_id": record.session_id, "template": record.template,
                         "created_at": record.created_at, "expires_at": record.expires_at}, 201)

    async def get(self) -> None:
        self.write_json({"sessions": [r.public() for r in await self.sessions.list()]})


class SessionHandler(GatewayHandler):
    async def get(self, session_id: str) -> None:
        self.write_json((await self.sessions.get(session_id)).public())

    async def delete(self, session_id: str) -> None:
        await self.sessions.delete(session_id)
        self.set_status(204)
        self.finish()


class ExecuteHandler(GatewayHandler):
    async def post(self) -> None:
        body = self.json_body()
        _only_known_fields(body, EXECUTE_FIELDS)
        code = body.get("code")
        if not isinstance(code, str):
            raise GatewayError(400, "BAD_REQUEST", "'code' is required and must be a string")
        language = body.get("language", "python")
        if language not in LANGUAGES:
            raise GatewayError(400, "BAD_REQUEST", f"'language' must be one of {LANGUAGES}, not {language!r}")
        timeout = _number(body, "timeout") or self.gateway.execute_timeout
        env = _string_map(body, "env")
        ansi = body.get("ansi", True)
        if not isinstance(ansi, bool):
            raise GatewayError(400, "BAD_REQUEST", "'ansi' must be true or false")
        session_id = body.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise GatewayError(400, "BAD_REQUEST", "'session_id' must be a string")
        if not session_id:
            template = body.get("template", "default")
            if not isinstance(template, str):
                raise GatewayError(400, "BAD_REQUEST", "'template' must be a string")
            _not_agent_runtime(self.sessions.template(template).kind, template)
            session_id = (await self.sessions.create(template, timeout=self.gateway.claim_timeout)).session_id
        self.set_header(SESSION_HEADER, session_id)
        stream = NDJSON in self.request.headers.get("Accept", "")
        started = time.perf_counter()
        async with self.sessions.use(session_id) as session:
            _not_agent_runtime(session.record.kind, session.record.template)
            if language == "python":
                work = self._python(session, code, timeout, env, stream, ansi)
            else:
                work = self._bash(session, code, timeout, env, stream)
            self._running = (session, language, asyncio.ensure_future(work))
            try:
                await self._running[2]
            except asyncio.CancelledError:
                if not self._client_gone:
                    raise
                return  # the client left; its command was killed (see on_connection_close)
            finally:
                self._running = None
        self.gateway.metrics.execute_seconds.labels("execute", language).observe(time.perf_counter() - started)

    _running = None  # (session, language, task) while an execution runs
    _client_gone = False

    def on_connection_close(self) -> None:
        """A client that disconnects stops its execution: the kernel is interrupted (its state
        is kept), a command is killed (PicoD kills it when the relayed request goes away)."""
        self._client_gone = True
        if self._running is None:
            return
        session, language, task = self._running
        if language == "python":
            asyncio.ensure_future(_interrupt_quietly(session, self.log))
        else:
            task.cancel()

    async def _python(self, session, code: str, timeout: float, env: dict, stream: bool, ansi: bool) -> None:
        payload = json.dumps({"code": code, "timeout": timeout, "env": env}).encode()
        headers = {"Content-Type": "application/json", "Accept": NDJSON if stream else "application/json"}
        response = await session.client.request("POST", "/api/run", token=session.token, headers=headers,
                                                data=payload, timeout=timeout + 30)
        async with response:
            if response.status != 200:
                raise _picod_error(response.status, await response.read())
            if not stream:
                raw = await response.read()
                if not ansi:
                    execution = json.loads(raw)
                    execution["error"] = _plain_error(execution.get("error"))
                    self.write_json({"session_id": session.record.session_id, **execution})
                    return
                # Splice the session id into PicoD's JSON object rather than decode and re-encode it.
                self.set_header("Content-Type", "application/json")
                self.finish(b'{"session_id": ' + json.dumps(session.record.session_id).encode() + b", " + raw[1:])
                return
            self.set_header("Content-Type", NDJSON)
            self.set_header("Cache-Control", "no-cache")
            async for line in response.content:
                event = json.loads(line)
                if event.get("type") == "start":
                    event["session_id"] = session.record.session_id
                elif event.get("type") == "error" and not ansi:
                    event = _plain_error(event)
                self.write(json.dumps(event) + "\n")
                await self.flush()
        self.finish()

    async def _bash(self, session, code: str, timeout: float, env: dict, stream: bool) -> None:
        started = time.perf_counter()
        status, result = await session.client.call_json(
            "POST", "/api/execute", {"command": ["bash", "-c", code], "timeout": f"{timeout}s", "env": env},
            token=session.token, timeout=timeout + 30)
        if status != 200:
            raise _picod_error(status, json.dumps(result).encode())
        execution = _command_execution(session.record.session_id, result, time.perf_counter() - started)
        if not stream:
            self.write_json(execution)
            return
        self.set_header("Content-Type", NDJSON)
        events = [{"type": "start", "session_id": execution["session_id"], "execution_count": None}]
        events += [{"type": name, "text": execution[name]} for name in ("stdout", "stderr") if execution[name]]
        if execution["error"]:
            events.append({"type": "error", **execution["error"]})
        events.append({"type": "end", "status": execution["status"], "exit_code": execution["exit_code"],
                       "duration_ms": execution["duration_ms"]})
        self.finish("".join(json.dumps(e) + "\n" for e in events))


def _command_execution(session_id: str, result: dict, seconds: float) -> dict:
    """A PicoD command result in the Execution shape (plus `exit_code`)."""
    code = result["exit_code"]
    status = "ok" if code == 0 else "timeout" if code == 124 else "error"
    error = None if code == 0 else {"name": "CommandTimedOut" if code == 124 else "CommandFailed",
                                    "value": f"exit code {code}", "traceback": []}
    return {"session_id": session_id, "execution_count": None, "status": status, "stdout": result["stdout"],
            "stderr": result["stderr"], "results": [], "error": error, "exit_code": code,
            "duration_ms": round(seconds * 1000, 3)}


def _picod_error(status: int, raw: bytes) -> GatewayError:
    try:
        message = json.loads(raw).get("error", "")
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace")[:300]
    if status == 503:
        return GatewayError(503, "KERNEL_UNAVAILABLE", f"the session's kernel is not available: {message}",
                            {"Retry-After": "2"})
    if status == 404:
        return GatewayError(404, "FILE_NOT_FOUND", message or "not found")
    if status == 413:  # a file at the limit, once wrapped in its upload form
        return GatewayError(413, "BODY_TOO_LARGE", f"the sandbox refused the upload as too large: {message}")
    if 400 <= status < 500:
        return GatewayError(400, "BAD_REQUEST", message)
    return GatewayError(502, "SANDBOX_ERROR", f"the sandbox answered {status}: {message}")


class FileHandler(GatewayHandler):
    """PUT writes raw bytes to a path in the session's workspace; GET streams it back."""

    async def put(self, session_id: str, path: str) -> None:
        # A file object, which aiohttp sends in chunks; the buffer is dropped, so one copy lives.
        data = io.BytesIO(bytes(self.body))
        self.body.clear()
        form = aiohttp.FormData()
        form.add_field("path", path)
        form.add_field("file", data, filename="upload", content_type="application/octet-stream")
        async with self.sessions.use(session_id) as session:
            _not_agent_runtime(session.record.kind, session.record.template)
            response = await session.client.request("POST", "/api/files", token=session.token, data=form,
                                                    timeout=120)
            async with response:
                raw = await response.read()
        if response.status != 200:
            raise _picod_error(response.status, raw)
        self.write_json(json.loads(raw), 201)

    async def get(self, session_id: str, path: str) -> None:
        async with self.sessions.use(session_id) as session:
            _not_agent_runtime(session.record.kind, session.record.template)
            # Every character quoted, "/" too: dot segments reach PicoD's jail (which refuses an
            # escape with a 400) instead of being folded away by the URL on the way.
            response = await session.client.request("GET", f"/api/files/{quote(path, safe='')}", token=session.token,
                                                    timeout=300)
            async with response:
                if response.status != 200:
                    raise _picod_error(response.status, await response.read())
                for name in ("Content-Type", "Content-Length", "Last-Modified", "Content-Disposition"):
                    if name in response.headers:
                        self.set_header(name, response.headers[name])
                async for chunk in response.content.iter_chunked(256 * 1024):
                    self.write(chunk)
                    await self.flush()
        self.finish()


class InterruptHandler(GatewayHandler):
    """`POST /v1/sessions/{id}/interrupt`: interrupt what the session's kernel runs (KeyboardInterrupt;
    the variables stay). 204; the running execution answers with its error."""

    async def post(self, session_id: str) -> None:
        async with self.sessions.use(session_id) as session:
            _not_agent_runtime(session.record.kind, session.record.template)
            await kernel_action(session, "interrupt")
        self.set_status(204)
        self.finish()


async def kernel_action(session, action: str, timeout: float = 30) -> None:
    """Ask the session's PicoD to interrupt or restart its kernel; its refusal is translated."""
    status, answer = await session.client.call_json("POST", f"/api/kernel/{action}", None,
                                                    token=session.token, timeout=timeout)
    if status != 200:
        raise _picod_error(status, json.dumps(answer).encode())


async def _interrupt_quietly(session, log) -> None:
    try:
        await kernel_action(session, "interrupt")
    except Exception as exc:  # the client is gone: there is nobody to tell
        log.info("could not interrupt session %s after its client left: %s", session.record.session_id, exc)


default_handlers = [
    (r"/v1/sessions", SessionsHandler),
    (r"/v1/sessions/([^/]+)/interrupt", InterruptHandler),
    (r"/v1/sessions/([^/]+)", SessionHandler),
    (r"/v1/sessions/([^/]+)/files/(.+)", FileHandler),
    (r"/v1/execute", ExecuteHandler),
]
