"""AgentCube's Router and Workload Manager APIs, so the unmodified agentcube-sdk works.

Router: `/v1/namespaces/{ns}/{code-interpreters|agent-runtimes}/{name}/invocations/{path}`
relays to the session's PicoD, the path and query unchanged, with a fresh RS256 token in place
of the client's Authorization. The `x-agentcube-session-id` header selects the session (its
unguessable id is the capability, as upstream); without it a session is created, which needs the
gateway token. Workload Manager: `POST /v1/code-interpreter` creates a session,
`DELETE /v1/code-interpreter/sessions/{id}` ends it. A template plays the CodeInterpreter's role.
"""

from __future__ import annotations

import io

import aiohttp

from ..sessions import UnknownSession, UnknownTemplate
from .base import GatewayError, GatewayHandler

SESSION_HEADER = "x-agentcube-session-id"
KINDS = {"code-interpreters": "code-interpreter", "agent-runtimes": "agent-runtime"}
RESOURCES = {"code-interpreter": "codeinterpreters", "agent-runtime": "agentruntimes"}
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Encoding", "Range", "If-Modified-Since",
                             "User-Agent")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Content-Length", "Content-Disposition",
                              "Content-Description", "Content-Transfer-Encoding", "Content-Range",
                              "Accept-Ranges", "Last-Modified", "Cache-Control", "Vary")
CHUNK = 256 * 1024


class RouterHandler(GatewayHandler):
    """Admission (before the body is read): a call on a session needs that session to exist; a
    call without one creates a session, which needs the gateway token. Either way it takes a
    slot of the fair concurrency limit, held until the answer is sent."""

    requires_token = False  # checked in admit, only when a session must be created

    def initialize(self, *args, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self._slot: str | None = None  # the limiter slot held, by session id ("" for a new session)
        self._session_id = ""

    def error_body(self, status: int, code: str, message: str) -> dict:
        if code in ("SERVER_OVERLOADED", "SESSION_OVERLOADED", "UNAUTHORIZED", "JWT_SIGNING_FAILED"):
            return {"error": message, "code": code}
        return {"error": message}

    async def admit(self) -> None:
        session_id = self.request.headers.get(SESSION_HEADER, "").strip()
        if not session_id and not self.token_ok():
            raise GatewayError(401, "UNAUTHORIZED", "authentication required: send the gateway token to "
                               f"create a session, or {SESSION_HEADER} to use one")
        limiter = self.gateway.router_limiter
        refused = limiter.acquire(session_id)
        if refused == "global":
            raise GatewayError(429, "SERVER_OVERLOADED", "server overloaded, please try again later",
                               {"Retry-After": "1"})
        if refused == "session":
            raise GatewayError(429, "SESSION_OVERLOADED", f"session {session_id} already has "
                               f"{limiter.per_session} calls in flight, its share of the gateway; wait "
                               "for one to finish, then retry", {"Retry-After": "1"})
        self._slot = self._session_id = session_id
        if session_id and await self.gateway.store.get(session_id) is None:
            raise _unknown_session(session_id)

    def _release(self) -> None:
        super()._release()
        if self._slot is not None:
            self.gateway.router_limiter.release(self._slot)
            self._slot = None

    async def get(self, namespace: str, plural: str, name: str, _path: str | None) -> None:
        await self._relay(namespace, plural, name)

    async def post(self, namespace: str, plural: str, name: str, _path: str | None) -> None:
        await self._relay(namespace, plural, name)

    def _upstream_path(self) -> str:
        """The raw path after `/invocations`, still percent-encoded, exactly as the client sent it."""
        raw = self.request.path
        return raw[raw.index("/invocations") + len("/invocations"):] or "/"

    async def _relay(self, namespace: str, plural: str, name: str) -> None:
        session_id = self._session_id or await self._create(namespace, KINDS[plural], name)
        try:
            async with self.sessions.use(session_id) as session:
                await self._proxy(session, self._upstream_path())
        except UnknownSession:
            raise _unknown_session(session_id) from None

    async def _create(self, namespace: str, kind: str, name: str) -> str:
        try:
            record = await self.sessions.create(name, timeout=self.gateway.claim_timeout,
                                                namespace=namespace, kind=kind)
        except UnknownTemplate:
            raise GatewayError(404, "NOT_FOUND", f'{RESOURCES[kind]}.agentcube.volcano.sh "{namespace}/{name}" '
                               "not found") from None
        return record.session_id

    async def _proxy(self, session, path: str) -> None:
        request = self.request
        target = path + (f"?{request.query}" if request.query else "")
        headers = {h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers}
        prior = request.headers.get("X-Forwarded-For")
        headers.update({"X-Forwarded-Host": request.host, "X-Forwarded-Proto": request.protocol,
                        "X-Forwarded-For": f"{prior}, {request.remote_ip}" if prior else request.remote_ip,
                        SESSION_HEADER: session.record.session_id})
        # A file object, which aiohttp sends in chunks without blocking the loop on a large body.
        body = io.BytesIO(bytes(self.body)) if request.method == "POST" else None
        self.body.clear()
        response = await session.client.request(request.method, target, token=session.token,
                                                headers=headers, data=body,
                                                read_timeout=self.gateway.relay_timeout)
        async with response:
            self.set_status(response.status, response.reason)
            for name in FORWARDED_RESPONSE_HEADERS:
                if name in response.headers:
                    self.set_header(name, response.headers[name])
            self.set_header(SESSION_HEADER, session.record.session_id)
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    self.write(chunk)
                    if len(self._write_buffer) > 4 * CHUNK:
                        await self.flush()
            except aiohttp.ClientError as exc:
                self.log.warning("sandbox stream of session %s broke: %s", session.record.session_id, exc)
        self.finish()


def _unknown_session(session_id: str) -> GatewayError:
    return GatewayError(404, "SESSION_NOT_FOUND", f'sessions.agentcube.volcano.sh "{session_id}" not found')


class WorkloadManagerHandler(GatewayHandler):
    """`POST /v1/code-interpreter` and `/v1/agent-runtime`: create a session, answer when ready."""

    def error_body(self, status: int, code: str, message: str) -> dict:
        return {"message": message}

    async def post(self, kind: str) -> None:
        try:
            body = self.json_body()
        except GatewayError:
            raise GatewayError(400, "BAD_REQUEST", "Invalid request body") from None
        namespace, name = body.get("namespace"), body.get("name")
        if not namespace or not isinstance(namespace, str):
            raise GatewayError(400, "BAD_REQUEST", "namespace is required")
        if not name or not isinstance(name, str):
            raise GatewayError(400, "BAD_REQUEST", "name is required")
        try:
            record = await self.sessions.create(name, timeout=self.gateway.claim_timeout, namespace=namespace,
                                                kind=kind)
        except UnknownTemplate:
            raise GatewayError(404, "NOT_FOUND", f"{kind.replace('-', ' ')} not found") from None
        self.write_json({"kind": "Sandbox", "sessionId": record.session_id, "sandboxId": record.sandbox_id,
                         "sandboxName": f"{name}-{record.sandbox_id.removeprefix('sb-')[:8]}",
                         "entryPoints": record.entry_points})


class WorkloadManagerSessionHandler(GatewayHandler):
    def error_body(self, status: int, code: str, message: str) -> dict:
        return {"message": message}

    async def delete(self, session_id: str) -> None:
        try:
            await self.sessions.delete(session_id)
        except UnknownSession:
            raise GatewayError(404, "NOT_FOUND", f"Session ID {session_id} not found, maybe already deleted") from None
        self.write_json({"message": "Sandbox deleted successfully"})


default_handlers = [
    (r"/v1/namespaces/([^/]+)/(code-interpreters|agent-runtimes)/([^/]+)/invocations(/.*)?", RouterHandler),
    (r"/v1/(code-interpreter|agent-runtime)", WorkloadManagerHandler),
    (r"/v1/(?:code-interpreter|agent-runtime)/sessions/([^/]+)", WorkloadManagerSessionHandler),
]
