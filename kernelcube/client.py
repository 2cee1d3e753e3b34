"""`CodeInterpreterClient`: one KernelCube session, used from ordinary (blocking) code.

```python
from kernelcube import CodeInterpreterClient

with CodeInterpreterClient() as ci:            # KERNELCUBE_URL, KERNELCUBE_TOKEN
    ci.run_code("x = 6 * 7")
    print(ci.run_code("x").text)               # '42': state persists in the session's kernel
```

The class name and the file and command methods are the agentcube-sdk's, so its users switch by
changing an import; `run_code` runs in a live kernel (variables persist) and returns an
`Execution` with rich results.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from . import _core
from ._core import Call, Settings
from .errors import CommandExecutionError, KernelCubeError
from .models import CommandResult, Execution, ExecutionBuilder, ExecutionError, Result


class CodeInterpreterClient:
    """A session on a KernelCube gateway: a sandbox with a live Jupyter kernel.

    `url` and `token` default to `KERNELCUBE_URL` and `KERNELCUBE_TOKEN`. The session is created
    now, or on first use with `lazy=True`; pass `session_id` to reattach to an existing one
    (nothing is sent until it is used). `close()` (or leaving the `with` block) ends the session
    unless `keep_session=True`. The agentcube-sdk's constructor arguments are accepted too:
    `name` and `auth_token` for `template` and `token`, `router_url` or `workload_manager_url`
    for `url` (and `ROUTER_URL` after `KERNELCUBE_URL`); `ttl` and `verbose` are ignored, as a
    session's lifetime is its template's.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, template: str | None = None,
                 session_id: str | None = None, lazy: bool = False, keep_session: bool = False,
                 create_timeout: float = 120.0, connect_timeout: float = 5.0,
                 request_timeout: float = 120.0, execution_timeout: float = 600.0, ansi: bool = False,
                 name: str | None = None, auth_token: str | None = None, namespace: str = "default",
                 router_url: str | None = None, workload_manager_url: str | None = None,
                 ttl: int | None = None, verbose: bool = False,
                 http_client: httpx.Client | None = None):
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
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(**self.settings.client_options())
        self._closed = False
        self._starting = threading.Lock()  # one session, even when threads race to the first call
        if session_id is None and not lazy:
            try:
                self.start()
            except BaseException:
                self._http.close()
                raise

    # -- the session -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.settings.url

    def start(self) -> str:
        """Create the session now if there is none; returns its id."""
        with self._starting:
            if self.session_id is None:
                call = _core.create_session_call(self.settings, self.template)
                record = self._send(call).json()
                self.session_id = record["session_id"]
                self.template = record.get("template", self.template)
            return self.session_id

    def _session(self) -> str:
        if self._closed:
            raise KernelCubeError("this client is closed")
        return self.session_id or self.start()

    def info(self) -> dict[str, Any]:
        """The session's record (template, created_at, expires_at, ...); SessionNotFound if it ended."""
        return self._send(_core.get_session_call(self._session())).json()

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every session on the gateway (needs the token; starts nothing): a cheap way to check
        the URL and token."""
        return self._send(Call("GET", "/v1/sessions")).json()["sessions"]

    def close(self, keep_session: bool | None = None) -> None:
        """End the session (unless kept) and release the connection. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        keep = self.keep_session if keep_session is None else keep_session
        try:
            if self.session_id is not None and not keep:
                self.delete_session()
        finally:
            if self._own_http:
                self._http.close()

    def delete_session(self) -> bool:
        """End the session now; False if it was already gone."""
        if self.session_id is None:
            return False
        try:
            self._send(_core.delete_session_call(self.session_id))
        except KernelCubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    stop = close  # the agentcube-sdk's name

    def __enter__(self) -> CodeInterpreterClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CodeInterpreterClient(url={self.url!r}, template={self.template!r}, session_id={self.session_id!r})"

    # -- code ------------------------------------------------------------------------------

    def run_code(self, code: str, language: str = "python", timeout: float | None = None, *,
                 on_stdout: Callable[[str], Any] | None = None, on_stderr: Callable[[str], Any] | None = None,
                 on_result: Callable[[Result], Any] | None = None,
                 on_error: Callable[[ExecutionError], Any] | None = None,
                 env: dict[str, str] | None = None) -> Execution:
        """Run code in the session: `python` in its live kernel (variables, imports and files
        persist between calls), `bash` as one command in the sandbox.

        With a callback the output streams (NDJSON) and each callback is called as it comes.
        An error in the code is `execution.error`, not an exception; a run past `timeout`
        seconds is interrupted and raises ExecutionTimeout (the session is kept). The
        agentcube-sdk's order, `run_code("python", code)`, works too."""
        code, language = _core.normalise_language(code, language)
        stream = any((on_stdout, on_stderr, on_result, on_error))
        call = _core.execute_call(self.settings, self._session(), code, language, timeout, env, stream)
        try:
            if not stream:
                execution = Execution.from_wire(self._send(call).json())
            else:
                execution = self._stream_execution(call, on_stdout, on_stderr, on_result, on_error)
        except httpx.TransportError as exc:  # while the answer streamed in
            raise _core.transport_error(exc, call) from exc
        return _core.finish_execution(execution, timeout, self.settings)

    def _stream_execution(self, call: Call, on_stdout, on_stderr, on_result, on_error) -> Execution:
        builder = ExecutionBuilder()
        callbacks = {"stdout": on_stdout, "stderr": on_stderr, "result": on_result, "error": on_error}
        with self._open_stream(call) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                value = builder.feed(event)
                callback = callbacks.get(event.get("type"))
                if callback is not None and value is not None:
                    callback(value)
        if not builder.ended:
            raise KernelCubeError("the execution's stream ended before its end event (the connection broke)")
        return builder.execution

    def interrupt(self) -> None:
        """Interrupt what the session's kernel runs (KeyboardInterrupt); its variables stay."""
        self._send(_core.interrupt_call(self._session()))

    # -- commands --------------------------------------------------------------------------

    def execute_command_result(self, command: str | list[str], timeout: float | None = None) -> CommandResult:
        """Run a command in the sandbox: a string through bash, a list as an argv."""
        execution = self.run_code(_core.command_code(command), "bash", timeout=timeout)
        return CommandResult(stdout=execution.stdout, stderr=execution.stderr,
                             exit_code=execution.exit_code if execution.exit_code is not None else 0)

    def execute_command(self, command: str | list[str], timeout: float | None = None) -> str:
        """Run a command and return its stdout; a non-zero exit raises CommandExecutionError
        (exit_code, stderr), as in the agentcube-sdk. A string runs through bash (pipes and
        `&&` work), a list runs as an argv."""
        result = self.execute_command_result(command, timeout=timeout)
        if result.exit_code != 0:
            raise CommandExecutionError(result.exit_code, result.stderr, command, result.stdout)
        return result.stdout

    # -- files -----------------------------------------------------------------------------

    def write_file(self, content: str | bytes, remote_path: str) -> dict[str, Any]:
        """Write `content` (text as UTF-8, or bytes) to a path in the session's workspace;
        returns the file's info (path, size, mode, modified)."""
        return self._send(_core.write_file_call(self._session(), remote_path, _core.local_content(content))).json()

    def upload_file(self, local_path: str | os.PathLike, remote_path: str) -> dict[str, Any]:
        """Copy a local file into the session's workspace."""
        with open(local_path, "rb") as f:
            content = f.read()
        return self._send(_core.write_file_call(self._session(), remote_path, content)).json()

    def read_file(self, remote_path: str) -> bytes:
        """The content of a file in the session's workspace."""
        return self._send(_core.read_file_call(self._session(), remote_path)).content

    def download_file(self, remote_path: str, local_path: str | os.PathLike) -> str:
        """Copy a file from the session's workspace to `local_path` (its directories are
        created), streamed; returns the local path."""
        local = _core.prepare_download(local_path)
        call = _core.read_file_call(self._session(), remote_path)
        try:
            with self._open_stream(call) as response, open(local, "wb") as f:
                for chunk in response.iter_bytes(256 * 1024):
                    f.write(chunk)
        except httpx.TransportError as exc:
            raise _core.transport_error(exc, call) from exc
        return local

    def list_files(self, path: str = ".") -> list[dict[str, Any]]:
        """The entries of a directory in the workspace: name, size, modified, mode, is_dir."""
        return self._send(_core.list_files_call(self.settings, self._session(), self.template, path)).json()["files"]

    # -- transport -------------------------------------------------------------------------

    def _send(self, call: Call) -> httpx.Response:
        try:
            with self._open_stream(call) as response:
                response.read()
        except httpx.TransportError as exc:
            raise _core.transport_error(exc, call) from exc
        return response

    @contextlib.contextmanager
    def _open_stream(self, call: Call) -> Iterator[httpx.Response]:
        """Send `call` (with retries as `_core.retry_delay` allows); yield the successful
        response with its body unread."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(call.method, call.path, **call.request_options(self.settings))
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = _core.retry_delay(call, attempt, exc=exc)
                if delay is None:
                    raise _core.transport_error(exc, call) from exc
            else:
                if response.is_success:
                    try:
                        yield response
                    finally:
                        response.close()
                    return
                try:
                    response.read()
                finally:
                    response.close()
                delay = _core.retry_delay(call, attempt, status=response.status_code, headers=response.headers)
                if delay is None:
                    _core.check(response, call)
            time.sleep(delay)
            attempt += 1
