"""Kernels forked from the gateway's zygote instead of spawned, when the gateway offers one.

The gateway hands PicoD one end of a socket pair (`--kernel-channel-fd`); whatever asks on it
is this sandbox, and the kernel the gateway gets forked for it lands in this sandbox only, as
its user (see the gateway's providers/kernel_channel.py). PicoD still owns the kernel's life:
the kernel is in its pid namespace, in its own process group, as the user whose processes
PicoD may signal (CAP_KILL), so interrupts and kills work as for a spawned kernel. It is not
PicoD's child, though: its exit status comes on a pipe from the process that waits for it
(the zygote's supervisor, outside the pid namespace), and closing that pipe kills the kernel.

PicoD falls back to spawning, as before, whenever the channel cannot give a kernel:
no zygote, a zygote that is starting too long or died, a gateway that is gone. A restart also
spawns when the user installed packages (a PYTHONPATH directory is not empty) or put modules
named like a preloaded one in the working directory, so that what the user added wins as it
would in a spawned kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket

log = logging.getLogger("picod.kernel")

REQUEST_TIMEOUT = 120.0  # the gateway bounds its own waits well below this
MAX_REPLY = 64 * 1024
LAUNCHER = ["-m", "ipykernel_launcher"]


class ZygoteUnavailable(RuntimeError):
    """The channel gave no kernel; the message says why."""


class KernelChannel:
    """PicoD's end of the channel to the gateway: one request at a time."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)  # never passed on to commands or a spawned kernel
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.closed = False
        self._lock = asyncio.Lock()

    async def request(self, body: dict) -> tuple[int, int]:
        """Ask for a kernel; its pid (in this sandbox) and the read end of its status pipe."""
        if self.closed:
            raise ZygoteUnavailable("the gateway's kernel channel is closed")
        async with self._lock:
            try:
                self.sock.send(json.dumps({"kernel": body}).encode())
                data, fds = await asyncio.wait_for(self._receive(), REQUEST_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                self.closed = True  # a late answer must never be taken for the next one's
                raise ZygoteUnavailable(f"the gateway did not answer: {exc!r}") from None
        if not data:
            self.closed = True
            raise ZygoteUnavailable("the gateway closed the kernel channel")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = {"error": "an unreadable reply"}
        if not reply.get("ok") or len(fds) != 1 or not isinstance(reply.get("pid"), int):
            for fd in fds:
                os.close(fd)
            raise ZygoteUnavailable(reply.get("error") or "no kernel")
        return reply["pid"], fds[0]

    async def _receive(self) -> tuple[bytes, list[int]]:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_REPLY, 1)
                return data, fds
            except BlockingIOError:
                await self._readable()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.sock, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(self.sock)


class ForkedKernel:
    """What KernelProcess expects of its `process` (a Popen), for a kernel that is not our
    child: poll, wait, signals, returncode."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, status_fd: int):
        self.pid = pid
        self.returncode: int | None = None
        self._status = status_fd
        os.set_blocking(status_fd, False)
        self._buffer = b""
        # Signals go through a pidfd: never to another process that reused the pid. None when it
        # has already exited (its status is then on the pipe).
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._status is None:  # closed before its end was known: it was killed with it
            self.returncode = -signal.SIGKILL
            return self.returncode
        try:
            while chunk := os.read(self._status, 4096):
                self._buffer += chunk
        except BlockingIOError:
            return None  # nothing more yet: still running
        # End of file: the supervisor said how the kernel ended, or died itself (then the
        # kernel was killed with it, see PR_SET_PDEATHSIG in kernel_zygote/kernel.py).
        try:
            self.returncode = int(json.loads(self._buffer.splitlines()[0])["exit"])
        except (IndexError, ValueError, KeyError, TypeError):
            self._signal(signal.SIGKILL)
            self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.poll()  # called only once poll() answered

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self._signal(signum)

    def _signal(self, signum: int) -> None:
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        for fd in (self._status, self._pidfd):
            try:
                if fd is not None:
                    os.close(fd)
            except OSError:
                pass
        self._status = self._pidfd = None


class ZygoteLauncher:
    """Asks the channel for a forked kernel, whenever a forked kernel would be the kernel
    PicoD would have spawned; the same launcher for every restart."""

    def __init__(self, channel: KernelChannel, preloaded: tuple[str, ...] = ()):
        self.channel = channel
        self.preloaded = preloaded  # top-level names of the preload's modules

    async def fork(self, cmd: list[str], kwargs: dict) -> ForkedKernel | None:
        """The forked kernel, or None when it is to be spawned (the log says why)."""
        why = self._why_spawn(cmd, kwargs)
        if why is None:
            try:
                pid, status = await self.channel.request(_request_body(cmd, kwargs))
            except ZygoteUnavailable as exc:
                why = str(exc)
            else:
                return ForkedKernel(pid, status)
        log.info("kernel spawned, not forked from the zygote: %s", why)
        return None

    def _why_spawn(self, cmd: list[str], kwargs: dict) -> str | None:
        if self.channel is None:
            return "no kernel channel"
        if cmd[1:3] != LAUNCHER:
            return f"the kernel command is not {' '.join(LAUNCHER)}"
        env = kwargs.get("env") or {}
        for path in filter(None, env.get("PYTHONPATH", "").split(os.pathsep)):
            if os.path.isdir(path) and os.listdir(path):
                return f"packages were installed into {path}"
        cwd = kwargs.get("cwd") or os.getcwd()
        for name in self.preloaded:
            if os.path.exists(os.path.join(cwd, name)) or os.path.exists(os.path.join(cwd, f"{name}.py")):
                return f"{name} in {cwd} would shadow the preloaded module"
        return None


def _request_body(cmd: list[str], kwargs: dict) -> dict:
    """What the gateway needs to make the kernel PicoD would have spawned: everything else
    (namespaces, ids, limits) it knows better than anything inside the sandbox."""
    env = {k: v for k, v in (kwargs.get("env") or {}).items() if k != "JPY_PARENT_PID"}
    umask = kwargs.get("umask")
    if umask is None:  # a spawned kernel would inherit ours
        umask = os.umask(0o022)
        os.umask(umask)
    return {"python": cmd[0], "argv": cmd[3:], "env": env, "cwd": str(kwargs.get("cwd") or os.getcwd()),
            "umask": int(umask)}
