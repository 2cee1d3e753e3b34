"""What the sync and async clients share: settings, the calls as data, the retry policy and the
reading of answers. The two clients differ only in how they send a `Call`.

Retries: a call whose request never left (connection refused, connect timeout) is retried
whatever its method; after that only idempotent calls (GET, PUT, DELETE) are retried, on a
transport error or a 502/503/504, at most `RETRIES` times with capped exponential backoff or the
gateway's `Retry-After`. Session creation also waits out 503 + `Retry-After` (no free sandbox)
until its own deadline. An execution is never retried: it may have run.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from .errors import ExecutionTimeout, KernelCubeError, error_for
from .models import Execution

NDJSON = "application/x-ndjson"
RETRIES = 2
BACKOFF_CAP = 4.0
RETRY_AFTER_CAP = 30.0
# How much longer than the execution's own timeout the client waits for its answer: the gateway
# interrupts the kernel at the timeout (and restarts one that ignores the interrupt for 5 s).
EXECUTE_MARGIN = 30.0
LANGUAGES = {"python": "python", "py": "python", "python3": "python", "ipython": "python",
             "bash": "bash", "sh": "bash", "shell": "bash"}
WORKSPACE = "/workspace"

OutputCallback = Callable[[str], Any]


@dataclass
class Settings:
    """Where the gateway is and how long to wait. Resolved once, when a client is built."""

    url: str
    token: str | None
    template: str
    namespace: str
    connect_timeout: float
    request_timeout: float
    execution_timeout: float
    create_timeout: float
    ansi: bool

    @classmethod
    def resolve(cls, url: str | None, token: str | None, template: str | None, *, namespace: str = "default",
                connect_timeout: float = 5.0, request_timeout: float = 120.0, execution_timeout: float = 600.0,
                create_timeout: float = 120.0, ansi: bool = False) -> Settings:
        url = url or os.environ.get("KERNELCUBE_URL") or os.environ.get("ROUTER_URL")
        if not url:
            raise ValueError("no KernelCube gateway URL: pass url=... or set KERNELCUBE_URL")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the gateway URL must be http:// or https://, not {url!r}")
        if token is None:
            token = os.environ.get("KERNELCUBE_TOKEN") or None
        return cls(url=url.rstrip("/"), token=token, template=template or "default", namespace=namespace,
                   connect_timeout=connect_timeout, request_timeout=request_timeout,
                   execution_timeout=execution_timeout, create_timeout=create_timeout, ansi=ansi)

    def client_options(self) -> dict[str, Any]:
        """httpx client options: the token, timeouts everywhere, and no redirects followed (a
        redirect could send the token, or the client, somewhere else)."""
        headers = {"User-Agent": "kernelcube-client"}
        if self.token:
            headers["Authorization"] = f"token {self.token}"
        timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
        return {"base_url": self.url, "headers": headers, "timeout": timeout, "follow_redirects": False}


@dataclass
class Call:
    """One HTTP call. `about` names what a 404 refers to; `create_deadline` marks session creation,
    which waits out 503 + Retry-After until then."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float | None = None
    about: str = ""
    create_deadline: float | None = None
    execution_limit: float | None = None  # an execution's timeout: a read timeout means it ran too long

    @property
    def idempotent(self) -> bool:
        return self.method in ("GET", "PUT", "DELETE", "HEAD")

    def request_options(self, settings: Settings) -> dict[str, Any]:
        options: dict[str, Any] = {"headers": self.headers}
        if self.json is not None:
            options["json"] = self.json
        if self.content is not None:
            options["content"] = self.content
        if self.params:
            options["params"] = self.params
        if self.read_timeout is not None:
            options["timeout"] = httpx.Timeout(self.read_timeout, connect=settings.connect_timeout)
        return options


def retry_delay(call: Call, attempt: int, *, status: int | None = None, headers=None,
                exc: Exception | None = None) -> float | None:
    """Seconds to wait before trying `call` again, or None not to retry. `attempt` counts from 0."""
    backoff = min(0.25 * 2 ** attempt, BACKOFF_CAP)
    if call.create_deadline is not None:
        remaining = call.create_deadline - time.monotonic()
        if remaining <= 0:
            return None
        if status == 503 or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            after = _retry_after(headers)
            return min(after if after is not None else backoff, RETRY_AFTER_CAP, remaining)
        return None
    if attempt >= RETRIES:
        return None
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return backoff  # the request never left: safe for any method
    if not call.idempotent:
        return None
    if exc is not None and isinstance(exc, httpx.TransportError):
        return backoff
    if status in (502, 503, 504):
        after = _retry_after(headers)
        return min(after, RETRY_AFTER_CAP) if after is not None else backoff
    return None


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float((headers or {}).get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


def check(response: httpx.Response, call: Call) -> httpx.Response:
    """The response if it succeeded; otherwise the exception the gateway's answer means.
    The body must have been read."""
    if response.is_success:
        return response
    return raise_error(response.status_code, response.content, response.headers, call)


def raise_error(status: int, body: bytes, headers, call: Call):
    raise error_for(status, body, headers, about=call.about)


def transport_error(exc: Exception, call: Call) -> KernelCubeError:
    """A network failure as the client's exception (the cause stays chained)."""
    if isinstance(exc, httpx.ReadTimeout) and call.execution_limit is not None:
        limit = call.execution_limit
        return ExecutionTimeout(f"no answer within {limit + EXECUTE_MARGIN:g} s (the execution's {limit:g} s "
                                "timeout plus a margin); the gateway interrupts the kernel when the client leaves")
    if isinstance(exc, httpx.TimeoutException):
        what = "connect to" if isinstance(exc, httpx.ConnectTimeout) else "get an answer from"
        return KernelCubeError(f"timed out trying to {what} the gateway ({call.method} {call.path})")
    return KernelCubeError(f"cannot reach the gateway ({call.method} {call.path}): {exc}")


# -- the calls ---------------------------------------------------------------------------------

def session_path(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def workspace_path(path: str) -> str:
    """A path in the session's workspace, relative to it: the kernel runs in `/workspace`, so
    `/workspace/x`, `/x` and `x` are all the workspace's `x`."""
    path = str(path)
    if path == WORKSPACE or path.startswith(WORKSPACE + "/"):
        path = path[len(WORKSPACE):]
    path = posixpath.normpath("/" + path.lstrip("/")).lstrip("/")
    return path or "."


def create_session_call(settings: Settings, template: str) -> Call:
    """The gateway waits up to `create_timeout` for a sandbox (its claim timeout); the client
    waits a little longer for the answer, and retries a 503 until the same deadline."""
    claim = settings.create_timeout
    return Call("POST", "/v1/sessions", json={"template": template, "timeout": claim}, read_timeout=claim + 10,
                about="template", create_deadline=time.monotonic() + claim)


def delete_session_call(session_id: str) -> Call:
    return Call("DELETE", session_path(session_id), about="session")


def get_session_call(session_id: str) -> Call:
    return Call("GET", session_path(session_id), about="session")


def normalise_language(code: str, language: str) -> tuple[str, str]:
    """(code, language), accepting the agentcube-sdk's order `run_code("python", code)` too."""
    if language not in LANGUAGES and code.strip().lower() in LANGUAGES:
        code, language = language, code.strip().lower()
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {sorted(set(LANGUAGES.values()))}, not {language!r}")
    return code, LANGUAGES[language]


def execute_call(settings: Settings, session_id: str, code: str, language: str, timeout: float | None,
                 env: dict[str, str] | None, stream: bool) -> Call:
    limit = float(timeout) if timeout is not None else settings.execution_timeout
    body: dict[str, Any] = {"code": code, "language": language, "session_id": session_id, "timeout": limit,
                            "ansi": settings.ansi}
    if env:
        body["env"] = env
    headers = {"Accept": NDJSON if stream else "application/json"}
    return Call("POST", "/v1/execute", json=body, headers=headers, read_timeout=limit + EXECUTE_MARGIN,
                about="session", execution_limit=limit)


def command_code(command: str | list[str]) -> str:
    """A string runs through bash, as typed in a shell; a list is an argv, run exactly as given
    (quoted, then `exec`ed, so bash adds nothing between)."""
    if isinstance(command, str):
        return command
    if not command or not all(isinstance(part, str) for part in command):
        raise ValueError("a command is a string (run by a shell) or a non-empty list of strings (an argv)")
    return "exec " + shlex.join(command)


def write_file_call(session_id: str, path: str, content: bytes) -> Call:
    return Call("PUT", f"{session_path(session_id)}/files/{quote(workspace_path(path), safe='/')}",
                content=content, headers={"Content-Type": "application/octet-stream"}, about="session")


def read_file_call(session_id: str, path: str) -> Call:
    return Call("GET", f"{session_path(session_id)}/files/{quote(workspace_path(path), safe='/')}", about="file")


def list_files_call(settings: Settings, session_id: str, template: str, path: str) -> Call:
    """The directory listing is PicoD's own `GET /api/files?path=`, reached through the Router
    (the execute API serves files, not listings); the session id selects the sandbox."""
    route = (f"/v1/namespaces/{quote(settings.namespace, safe='')}/code-interpreters/"
             f"{quote(template, safe='')}/invocations/api/files")
    return Call("GET", route, params={"path": workspace_path(path)},
                headers={"x-agentcube-session-id": session_id}, about="relayed file")


def interrupt_call(session_id: str) -> Call:
    return Call("POST", f"{session_path(session_id)}/interrupt", about="session")


def finish_execution(execution: Execution, timeout: float | None, settings: Settings) -> Execution:
    """The execution, or ExecutionTimeout when the gateway stopped it at its timeout."""
    if execution.status == "timeout":
        limit = timeout if timeout is not None else settings.execution_timeout
        raise ExecutionTimeout(f"the execution exceeded its {limit:g} s timeout and was interrupted; the "
                               "session and its variables are kept", execution=execution, code="TIMEOUT")
    return execution


def local_content(content: str | bytes) -> bytes:
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise TypeError(f"content must be str or bytes, not {type(content).__name__}")


def prepare_download(local_path: str | os.PathLike) -> str:
    local = os.fspath(local_path)
    parent = os.path.dirname(os.path.abspath(local))
    os.makedirs(parent, exist_ok=True)
    return local
