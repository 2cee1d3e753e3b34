"""Run one command (argv, no shell) the way upstream PicoD does, without its leaks.

Each command gets its own session and process group; on timeout or client disconnect the
whole group is SIGKILLed, and the pipes are read for at most GRACE_SECONDS more, so the reply
never waits on an orphaned grandchild. Output is capped per stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .identity import RunAs, kwargs_for

TIMEOUT_EXIT_CODE = 124
GRACE_SECONDS = 0.5
READ_CHUNK = 64 * 1024
# Variables of the daemon itself that a command must never see.
PRIVATE_ENV_PREFIXES = ("PICOD_", "KERNELCUBE_")


def child_environment(extra: dict[str, str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment minus its private variables, then the request's `env`."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.startswith(PRIVATE_ENV_PREFIXES)}
    env.update(extra or {})
    return env


@dataclass
class _Capture:
    limit: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int
    duration: float
    start_time: float
    end_time: float


class _CaptureProtocol(asyncio.SubprocessProtocol):
    """Collects both pipes and signals process exit apart from pipe closure.

    asyncio's Process.wait() may only return once every pipe is closed, which a backgrounded
    grandchild can postpone forever; process_exited() fires when the child itself exits.
    """

    def __init__(self, max_output: int):
        loop = asyncio.get_running_loop()
        self.out, self.err = _Capture(max_output), _Capture(max_output)
        self.exited: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.out if fd == 1 else self.err).add(data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _format_seconds(seconds: float) -> str:
    # Go's %.0f rounds half to even, and so does Python's format.
    return f"{seconds:.0f}"


async def run_command(argv: list[str], *, timeout: float, cwd: str, env: dict[str, str],
                      max_output: int, run_as: RunAs | None = None) -> CommandResult:
    """Run argv and collect its output; cancelling this coroutine kills the process group."""
    start = time.time()
    if timeout <= 0:
        end = time.time()
        return CommandResult("", f"Command timed out after {_format_seconds(timeout)} seconds",
                             TIMEOUT_EXIT_CODE, end - start, start, end)
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.subprocess_exec(
            lambda: _CaptureProtocol(max_output), *argv, cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, **kwargs_for(run_as))
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
        # OSError EAGAIN or RuntimeError (no thread): most often the sandbox's process limit
        end = time.time()
        return CommandResult("", f"exec: {argv[0]!r}: {exc}", 1, end - start, start, end)

    pid = transport.get_pid()
    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(proto.exited), timeout)
        except asyncio.TimeoutError:
            timed_out = True
            _kill_group(pid)
            await proto.exited
        # The child is gone; grandchildren may still hold the pipes open.
        try:
            await asyncio.wait_for(asyncio.shield(proto.closed), GRACE_SECONDS)
        except asyncio.TimeoutError:
            _kill_group(pid)
    except asyncio.CancelledError:
        _kill_group(pid)
        # Let the child watcher collect the exit status before the transport is closed: closing
        # first would reap the child under the watcher's feet and leave its Popen unfinished.
        try:
            await asyncio.wait_for(asyncio.shield(proto.exited), GRACE_SECONDS)
        except asyncio.TimeoutError:
            pass
        raise
    finally:
        transport.close()
    end = time.time()

    out, err = proto.out, proto.err
    stderr = err.text()
    for name, capture in (("stdout", out), ("stderr", err)):
        if capture.dropped:
            stderr += f"\n[picod: {name} truncated: {capture.dropped} bytes beyond the {capture.limit}-byte cap were dropped]"
    code = transport.get_returncode()
    if timed_out:
        code = TIMEOUT_EXIT_CODE
        stderr += f"Command timed out after {_format_seconds(timeout)} seconds"
    elif code is None or code < 0:
        code = -1  # killed by a signal, as upstream reports it
    return CommandResult(out.text(), stderr, code, end - start, start, end)
