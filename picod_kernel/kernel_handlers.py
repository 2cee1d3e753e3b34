"""The kernel bridge over HTTP: `POST /api/run`, interrupt and restart (the channels WebSocket is in
`channels`)."""

from __future__ import annotations

import json
import logging
import math

from .kernel import KernelUnavailable
from .server import Reply, Request, RequestError

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


def _kernel(state):
    if state.kernel is None:
        raise RequestError(404, "this PicoD runs without a kernel (started with --no-kernel)")
    return state.kernel


async def _call(operation):
    try:
        return await operation
    except KernelUnavailable as exc:
        raise RequestError(503, f"{exc}; retry when GET /health reports the kernel ready") from None


async def run(state, request: Request, reply: Reply) -> None:
    """Runs code in the live kernel: one Execution JSON, or NDJSON events when asked."""
    code, timeout, env = _parse_run_request(request.json_body())
    kernel = _kernel(state)
    if NDJSON not in request.headers.get("accept", ""):
        reply.send_json(await _call(kernel.execute(code, timeout, env)))
        return
    reply.headers["Content-Type"] = NDJSON
    reply.headers["Cache-Control"] = "no-cache"

    def emit(event: dict) -> None:
        if not reply.started:
            reply.start()
        reply.write((json.dumps(event) + "\n").encode())

    await _call(kernel.execute(code, timeout, env, on_event=emit))
    if not reply.started:
        reply.start()
    reply.end()


async def set_env(state, request: Request, reply: Reply) -> None:
    """`POST /api/kernel/env {"env": {...}}`: variables for the rest of the kernel's life."""
    env = request.json_body().get("env")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError(400, "'env' is required and must be an object mapping strings to strings")
    await _call(_kernel(state).set_env(env))
    reply.send_json({"status": "ok"})


async def interrupt(state, request: Request, reply: Reply) -> None:
    await _call(_kernel(state).interrupt())
    reply.send_json({"status": "ok"})


async def restart(state, request: Request, reply: Reply) -> None:
    kernel = _kernel(state)
    await _call(kernel.restart())
    reply.send_json({"status": "ok", "kernel": kernel.state})
