"""Run one command (argv, no shell) the way upstream PicoD does, without its leaks.

Each command gets its own session and process group; on timeout or client disconnect the
whole group is SIGKILLed, and the pipes are read for at most GRACE_SECONDS more, so the reply
never waits on an orphaned grandchild. Output is capped per stream.

The child is started by `subprocess.Popen` (the same arguments asyncio would pass it), but its
pipes and its exit are watched on the loop directly: the pipes' read ends with `add_reader`, the
exit through a pidfd. asyncio's subprocess transport (two pipe transports, a child watcher,
`wait_for` tasks) cost more of the daemon's time per command than the spawn itself. While other
commands run, a new one is started by a `Spawner` thread, so that the loop does not stop until
the child has exec'd (see spawner.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .identity import RunAs, kwargs_for
from .spawner import Spawner

TIMEOUT_EXIT_CODE = 124
GRACE_SECONDS = 0.5
READ_CHUNK = 64 * 1024
# Without pidfds (Linux before 5.3, some sandbox kernels) the exit is polled this often.
EXIT_POLL_SECONDS = 0.01
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


@functools.cache
def _devnull() -> int:
    """One /dev/null for every command's stdin (opened as Popen's DEVNULL is, read-write)."""
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class _Child:
    """A started command: both pipes read on the loop, its exit seen apart from pipe closure
    (a backgrounded grandchild can hold the pipes open forever). The child is reaped whenever
    it exits, whether or not anyone still waits for it."""

    def __init__(self, proc: subprocess.Popen, out_read: int, err_read: int, max_output: int):
        self.loop = asyncio.get_running_loop()
        self.out, self.err = _Capture(max_output), _Capture(max_output)
        self.proc = proc
        self.pid = proc.pid
        self.exited = self.loop.create_future()
        self.closed = self.loop.create_future()
        self._pipes = {out_read: self.out, err_read: self.err}
        for fd in self._pipes:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._read, fd)
        self._watch_exit()

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._pipes[fd].add(data)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        os.close(fd)
        del self._pipes[fd]
        if not self._pipes and not self.closed.done():
            self.closed.set_result(None)

    def _watch_exit(self) -> None:
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
            self._poll_exit()
            return
        self.loop.add_reader(self._pidfd, self._reap)

    def _poll_exit(self) -> None:
        if self.proc.poll() is None:
            self.loop.call_later(EXIT_POLL_SECONDS, self._poll_exit)
        else:
            self._reap()

    def _reap(self) -> None:
        if self.proc.poll() is None:
            return  # not yet (a pidfd is readable only once the child has exited, but be sure)
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self.exited.done():
            self.exited.set_result(None)

    async def wait(self, future: asyncio.Future, timeout: float) -> bool:
        """Wait up to `timeout` for `future` without cancelling it; True when it is done."""
        if future.done():
            return True
        waiter = self.loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = self.loop.call_later(timeout, wake)
        future.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
        return future.done()

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop reading (output still in the pipes is dropped) and kill the child if it still
        runs; it is reaped when it exits."""
        for fd in list(self._pipes):
            self._close_pipe(fd)
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


def _format_seconds(seconds: float) -> str:
    # Go's %.0f rounds half to even, and so does Python's format.
    return f"{seconds:.0f}"


async def _spawn(argv: list[str], cwd: str, env: dict[str, str], max_output: int, run_as: RunAs | None,
                 spawner: Spawner | None) -> _Child:
    """Start argv with its output on two pipes: on the loop, or by the spawner's threads while
    other commands run. Cancelled while a thread starts it, the child is killed once started."""
    out_read, out_write = os.pipe()
    try:
        err_read, err_write = os.pipe()
    except OSError:
        os.close(out_read)
        os.close(out_write)
        raise
    popen_kwargs = {"stdin": _devnull(), "stdout": out_write, "stderr": err_write, "cwd": cwd, "env": env,
                    "start_new_session": True, **kwargs_for(run_as)}
    try:
        if spawner is None or not spawner.should_wait_for():
            try:
                proc = subprocess.Popen(argv, **popen_kwargs)  # noqa: ASYNC220 -- on purpose, see spawner.py
            finally:
                os.close(out_write)
                os.close(err_write)
        else:
            try:
                started = spawner.start(argv, (out_write, err_write), **popen_kwargs)
            except BaseException:
                os.close(out_write)
                os.close(err_write)
                raise
            try:
                proc = await asyncio.shield(started)
            except asyncio.CancelledError:
                started.add_done_callback(lambda f: _abandon(f, out_read, err_read))
                raise
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            os.close(out_read)
            os.close(err_read)
        raise
    return _Child(proc, out_read, err_read, max_output)


def _abandon(started: asyncio.Future, out_read: int, err_read: int) -> None:
    """A child started for a request that went away meanwhile: kill its group, reap it."""
    if started.cancelled() or started.exception() is not None:
        os.close(out_read)
        os.close(err_read)
        return
    child = _Child(started.result(), out_read, err_read, 0)
    child.kill_group()
    child.close()


async def run_command(argv: list[str], *, timeout: float, cwd: str, env: dict[str, str],
                      max_output: int, run_as: RunAs | None = None,
                      spawner: Spawner | None = None) -> CommandResult:
    """Run argv and collect its output; cancelling this coroutine kills the process group.
    With a `spawner`, a command started while others run is started by its threads."""
    start = time.time()
    if timeout <= 0:
        end = time.time()
        return CommandResult("", f"Command timed out after {_format_seconds(timeout)} seconds",
                             TIMEOUT_EXIT_CODE, end - start, start, end)
    try:
        child = await _spawn(argv, cwd, env, max_output, run_as, spawner)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
        # OSError EAGAIN: most often the sandbox's process limit
        end = time.time()
        return CommandResult("", f"exec: {argv[0]!r}: {exc}", 1, end - start, start, end)
    if spawner is not None:
        spawner.active += 1

    timed_out = False
    try:
        if not await child.wait(child.exited, timeout):
            timed_out = True
            child.kill_group()
            await child.exited
        # The child is gone; grandchildren may still hold the pipes open.
        if not await child.wait(child.closed, GRACE_SECONDS):
            child.kill_group()
    except asyncio.CancelledError:
        child.kill_group()
        await child.wait(child.exited, GRACE_SECONDS)
        raise
    finally:
        child.close()
        if spawner is not None:
            spawner.active -= 1
    end = time.time()

    out, err = child.out, child.err
    stderr = err.text()
    for name, capture in (("stdout", out), ("stderr", err)):
        if capture.dropped:
            stderr += f"\n[picod: {name} truncated: {capture.dropped} bytes beyond the {capture.limit}-byte cap were dropped]"
    code = child.proc.returncode
    if timed_out:
        code = TIMEOUT_EXIT_CODE
        stderr += f"Command timed out after {_format_seconds(timeout)} seconds"
    elif code is None or code < 0:
        code = -1  # killed by a signal, as upstream reports it
    return CommandResult(out.text(), stderr, code, end - start, start, end)
