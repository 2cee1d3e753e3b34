"""The kernel bridge over HTTP: `POST /api/run`, interrupt and restart (the channels WebSocket is in
`channels`)."""

from __future__ import annotations

import json
import logging
import math

from .base import PicodHandler, RequestError
from .kernel import KernelUnavailable

log = logging.getLogger("picod.kernel")

NDJSON = "application/x-ndjson"


def _parse_run_request(body: dict) -> tuple[str, float | None, dict[str, str]]:
    code = body.get("code")
    if not isinstance(code, str):
        raise RequestError(400, "'code' is required and must be a string")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise RequestError(400, "'timeout' must be a positive number of seconds")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError(400, "'env' must be an object mapping strings to strings")
    return code, timeout, env


class KernelHandler(PicodHandler):
    @property
    def kernel(self):
        if self.state.kernel is None:
            raise RequestError(404, "this PicoD runs without a kernel (started with --no-kernel)")
        return self.state.kernel

    async def call(self, operation):
        try:
            return await operation
        except KernelUnavailable as exc:
            raise RequestError(503, f"{exc}; retry when GET /health reports the kernel ready") from None


class RunHandler(KernelHandler):
    """Runs code in the live kernel: one Execution JSON, or NDJSON events when asked."""

    async def post(self) -> None:
        code, timeout, env = _parse_run_request(self.json_body())
        kernel = self.kernel
        if NDJSON not in self.request.headers.get("Accept", ""):
            self.write_json(await self.call(kernel.execute(code, timeout, env)))
            return
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")

        def emit(event: dict) -> None:
            if not self.request.connection.stream.closed():
                self.write(json.dumps(event) + "\n")
                self.flush()

        await self.call(kernel.execute(code, timeout, env, on_event=emit))
        self.finish()


class EnvHandler(KernelHandler):
    """`POST /api/kernel/env {"env": {...}}`: variables for the rest of the kernel's life."""

    async def post(self) -> None:
        env = self.json_body().get("env")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise RequestError(400, "'env' is required and must be an object mapping strings to strings")
        await self.call(self.kernel.set_env(env))
        self.write_json({"status": "ok"})


class InterruptHandler(KernelHandler):
    async def post(self) -> None:
        await self.call(self.kernel.interrupt())
        self.write_json({"status": "ok"})


class RestartHandler(KernelHandler):
    async def post(self) -> None:
        await self.call(self.kernel.restart())
        self.write_json({"status": "ok", "kernel": self.kernel.state})
