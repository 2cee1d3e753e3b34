"""`GET /health` and `POST /api/execute`."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from .duration import parse_go_duration
from .execute import child_environment, run_command
from .jail import JailError
from .server import Reply, Request, RequestError

DEFAULT_TIMEOUT = "60s"


def rfc3339(epoch: float) -> str:
    """Go's time.Time JSON form in UTC: nanosecond fraction, trailing zeros trimmed."""
    stamp = datetime.fromtimestamp(epoch, tz=timezone.utc)
    fraction = f"{stamp.microsecond:06d}000".rstrip("0")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def go_duration(seconds: float) -> str:
    """A readable Go-style duration such as 1m2.345s or 3h0m5s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


async def health(state, request: Request, reply: Reply) -> None:
    """Liveness plus the kernel's state: 200 once the kernel answered kernel_info, else 503."""
    kernel = state.kernel
    body = {"status": "ok", "service": "PicoD", "version": "0.0.1",
            "uptime": go_duration(time.monotonic() - state.started),
            "kernel": kernel.state if kernel else "disabled"}
    if kernel and kernel.failure:
        body["kernel_error"] = kernel.failure
    if kernel and kernel.preload_report is not None:
        body["preload"] = kernel.preload_report
    if kernel and kernel.state == "ready":
        body["kernel_source"] = "zygote" if kernel.forked else "spawn"
    ready = kernel is None or kernel.state == "ready"
    if not ready:
        body["status"] = "starting" if kernel.state in ("starting", "restarting") else "unavailable"
    reply.send_json(body, 200 if ready else 503)


def _parse_execute_request(body: dict) -> tuple[list[str], float, str | None, dict[str, str]]:
    command = body.get("command")
    if command is None:
        raise RequestError(400, "Key: 'ExecuteRequest.Command' Error:Field validation for 'Command' failed on the 'required' tag")
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise RequestError(400, "'command' must be an array of strings (argv; no shell)")
    if not command:
        raise RequestError(400, "command cannot be empty")
    timeout_text = body.get("timeout") or DEFAULT_TIMEOUT
    if not isinstance(timeout_text, str):
        raise RequestError(400, "Invalid timeout format: 'timeout' must be a Go duration string such as \"30s\"")
    try:
        timeout = parse_go_duration(timeout_text)
    except ValueError as exc:
        raise RequestError(400, f"Invalid timeout format: {exc}") from None
    working_dir = body.get("working_dir")
    if working_dir is not None and not isinstance(working_dir, str):
        raise RequestError(400, "'working_dir' must be a string")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError(400, "'env' must be an object mapping strings to strings")
    return command, timeout, working_dir, env


async def execute(state, request: Request, reply: Reply) -> None:
    """Runs argv in a new process group; the group dies on timeout or when the client goes (the
    route cancels this task then, and run_command kills the group)."""
    command, timeout, working_dir, env = _parse_execute_request(request.json_body())
    cwd = state.workspace.root
    if working_dir:
        try:
            cwd = await asyncio.to_thread(state.workspace.make_dirs, working_dir)
        except JailError as exc:
            raise RequestError(400, f"Invalid working directory: {exc}") from None
        except OSError as exc:
            raise RequestError(500, f"Failed to create working directory: {exc}") from None
    result = await run_command(command, timeout=timeout, cwd=cwd, env=child_environment(env, state.command_env),
                               max_output=state.max_output, run_as=state.run_as, spawner=state.spawner)
    reply.send_json({"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
                     "duration": result.duration, "start_time": rfc3339(result.start_time),
                     "end_time": rfc3339(result.end_time)})
