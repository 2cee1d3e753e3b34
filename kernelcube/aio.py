"""`AsyncCodeInterpreterClient`: the same session API as `CodeInterpreterClient`, for asyncio
(or trio) code. Nothing is sent by the constructor: `async with` (or `await start()`) creates the
session unless `lazy=True`, and the first call does otherwise. Callbacks may be plain functions
or coroutine functions.

```python
async with AsyncCodeInterpreterClient() as ci:
    execution = await ci.run_code("import sys; sys.version", on_stdout=print)
```
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx

from . import _core
from ._core import Call, Settings
from .errors import CommandExecutionError, KernelCubeError
from .models import CommandResult, Execution, ExecutionBuilder, ExecutionError, Result


class AsyncCodeInterpreterClient:
    """A session on a KernelCube gateway, for async code; see `CodeInterpreterClient`."""

    def __init__(self, url: str | None = None, token: str | None = None, *, template: str | None = None,
                 session_id: str | None = None, lazy: bool = False, keep_session: bool = False,
                 create_timeout: float = 120.0, connect_timeout: float = 5.0,
                 request_timeout: float = 120.0, execution_timeout: float = 600.0, ansi: bool = False,
                 name: str | None = None, auth_token: str | None = None, namespace: str = "default",
                 router_url: str | None = None, workload_manager_url: str | None = None,
                 ttl: int | None = None, verbose: bool = False,
                 http_client: httpx.AsyncClient | None = None):
        # agentcube-sdk spellings: KernelCube serves the Router and the Workload Manager at one URL;
        # a session's lifetime is its template's (`ttl` and `verbose` are accepted and unused).
        url = url or router_url or workload_manager_url
        self.settings = Settings.resolve(url, token if token is not None else auth_token, template or name,
                                         namespace=namespace, connect_timeout=connect_timeout,
                                         request_timeout=request_timeout, execution_timeout=execution_timeout,
                                         create_timeout=create_timeout, ansi=ansi)
        self.template = self.settings.template
        self.keep_session = keep_session
        self.session_id: str | None = session_id
        self.lazy = lazy
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(**self.settings.client_options())
        self._closed = False
        self._starting = anyio.Lock()  # one session, even when tasks race to the first call

    # -- the session -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.settings.url

    async def start(self) -> str:
        """Create the session now if there is none; returns its id."""
        async with self._starting:
            if self.session_id is None:
                call = _core.create_session_call(self.settings, self.template)
                record = (await self._send(call)).json()
                self.session_id = record["session_id"]
                self.template = record.get("template", self.template)
            return self.session_id

    async def _session(self) -> str:
        if self._closed:
            raise KernelCubeError("this client is closed")
        return self.session_id or await self.start()

    async def info(self) -> dict[str, Any]:
        """The session's record; SessionNotFound if it ended."""
        return (await self._send(_core.get_session_call(await self._session()))).json()

    async def list_sessions(self) -> list[dict[str, Any]]:
        """Every session on the gateway (needs the token; starts nothing)."""
        return (await self._send(Call("GET", "/v1/sessions"))).json()["sessions"]

    async def close(self, keep_session: bool | None = None) -> None:
        """End the session (unless kept) and release the connection. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        keep = self.keep_session if keep_session is None else keep_session
        try:
            if self.session_id is not None and not keep:
                await self.delete_session()
        finally:
            if self._own_http:
                await self._http.aclose()

    async def delete_session(self) -> bool:
        """End the session now; False if it was already gone."""
        if self.session_id is None:
            return False
        try:
            await self._send(_core.delete_session_call(self.session_id))
        except KernelCubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    stop = close

    async def __aenter__(self) -> AsyncCodeInterpreterClient:
        if not self.lazy:
            try:
                await self.start()
            except BaseException:
                await self._http.aclose()
                raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"AsyncCodeInterpreterClient(url={self.url!r}, template={self.template!r}, "
                f"session_id={self.session_id!r})")

    # -- code ------------------------------------------------------------------------------

    # `timeout` is the gateway's limit on the execution (it interrupts the kernel), not a client-side
    # deadline that anyio.fail_after could replace.
    async def run_code(self, code: str, language: str = "python", timeout: float | None = None, *,  # noqa: ASYNC109
                       on_stdout: Callable[[str], Any] | None = None,
                       on_stderr: Callable[[str], Any] | None = None,
                       on_result: Callable[[Result], Any] | None = None,
                       on_error: Callable[[ExecutionError], Any] | None = None,
                       env: dict[str, str] | None = None) -> Execution:
        """As `CodeInterpreterClient.run_code`; callbacks may be coroutine functions."""
        code, language = _core.normalise_language(code, language)
        stream = any((on_stdout, on_stderr, on_result, on_error))
        call = _core.execute_call(self.settings, await self._session(), code, language, timeout, env, stream)
        try:
            if not stream:
                execution = Execution.from_wire((await self._send(call)).json())
            else:
                execution = await self._stream_execution(call, on_stdout, on_stderr, on_result, on_error)
        except httpx.TransportError as exc:
            raise _core.transport_error(exc, call) from exc
        return _core.finish_execution(execution, timeout, self.settings)

    async def _stream_execution(self, call: Call, on_stdout, on_stderr, on_result, on_error) -> Execution:
        builder = ExecutionBuilder()
        callbacks = {"stdout": on_stdout, "stderr": on_stderr, "result": on_result, "error": on_error}
        async with self._open_stream(call) as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                value = builder.feed(event)
                callback = callbacks.get(event.get("type"))
                if callback is not None and value is not None:
                    outcome = callback(value)
                    if inspect.isawaitable(outcome):
                        await outcome
        if not builder.ended:
            raise KernelCubeError("the execution's stream ended before its end event (the connection broke)")
        return builder.execution

    async def interrupt(self) -> None:
        """Interrupt what the session's kernel runs (KeyboardInterrupt); its variables stay."""
        await self._send(_core.interrupt_call(await self._session()))

    # -- commands --------------------------------------------------------------------------

    async def execute_command_result(self, command: str | list[str],
                                     timeout: float | None = None) -> CommandResult:  # noqa: ASYNC109
        """Run a command in the sandbox: a string through bash, a list as an argv."""
        execution = await self.run_code(_core.command_code(command), "bash", timeout=timeout)
        return CommandResult(stdout=execution.stdout, stderr=execution.stderr,
                             exit_code=execution.exit_code if execution.exit_code is not None else 0)

    async def execute_command(self, command: str | list[str], timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Run a command and return its stdout; non-zero exit raises CommandExecutionError."""
        result = await self.execute_command_result(command, timeout=timeout)
        if result.exit_code != 0:
            raise CommandExecutionError(result.exit_code, result.stderr, command, result.stdout)
        return result.stdout

    # -- files -----------------------------------------------------------------------------

    async def write_file(self, content: str | bytes, remote_path: str) -> dict[str, Any]:
        """Write `content` (text as UTF-8, or bytes) to a path in the session's workspace."""
        call = _core.write_file_call(await self._session(), remote_path, _core.local_content(content))
        return (await self._send(call)).json()

    async def upload_file(self, local_path: str | os.PathLike, remote_path: str) -> dict[str, Any]:
        """Copy a local file into the session's workspace."""
        content = await anyio.Path(local_path).read_bytes()
        return (await self._send(_core.write_file_call(await self._session(), remote_path, content))).json()

    async def read_file(self, remote_path: str) -> bytes:
        """The content of a file in the session's workspace."""
        return (await self._send(_core.read_file_call(await self._session(), remote_path))).content

    async def download_file(self, remote_path: str, local_path: str | os.PathLike) -> str:
        """Copy a file from the session's workspace to `local_path`, streamed; returns the path."""
        local = await anyio.to_thread.run_sync(_core.prepare_download, local_path)
        call = _core.read_file_call(await self._session(), remote_path)
        try:
            async with self._open_stream(call) as response, await anyio.open_file(local, "wb") as f:
                async for chunk in response.aiter_bytes(256 * 1024):
                    await f.write(chunk)
        except httpx.TransportError as exc:
            raise _core.transport_error(exc, call) from exc
        return local

    async def list_files(self, path: str = ".") -> list[dict[str, Any]]:
        """The entries of a directory in the workspace: name, size, modified, mode, is_dir."""
        call = _core.list_files_call(self.settings, await self._session(), self.template, path)
        return (await self._send(call)).json()["files"]

    # -- transport -------------------------------------------------------------------------

    async def _send(self, call: Call) -> httpx.Response:
        try:
            async with self._open_stream(call) as response:
                await response.aread()
        except httpx.TransportError as exc:
            raise _core.transport_error(exc, call) from exc
        return response

    @contextlib.asynccontextmanager
    async def _open_stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        """Send `call` with the retries `_core.retry_delay` allows; yield the successful response
        with its body unread."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(call.method, call.path, **call.request_options(self.settings))
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = _core.retry_delay(call, attempt, exc=exc)
                if delay is None:
                    raise _core.transport_error(exc, call) from exc
            else:
                if response.is_success:
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                delay = _core.retry_delay(call, attempt, status=response.status_code, headers=response.headers)
                if delay is None:
                    _core.check(response, call)
            await anyio.sleep(delay)
            attempt += 1
