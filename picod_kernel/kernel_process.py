"""The kernel's process: its connection file, its launch, its signals and its sockets.

The kernel binds IPC sockets at `<runtime_dir>/ipc-<N>`, as its connection file says; every
restart keeps that file (key and paths), so the sockets connected to it reconnect by themselves.
A kernel is spawned in a session of its own (its process group is its pid), or forked from the
gateway's zygote when PicoD has a kernel channel (see forked_kernel.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess

import zmq
import zmq.asyncio

from .forked_kernel import ForkedKernel, ZygoteLauncher
from .session import SIGNATURE_SCHEME, Session, new_id

log = logging.getLogger("picod.kernel")

# In the order the ports are given out, as Jupyter gives them out.
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
SOCKET_TYPES = {"shell": zmq.DEALER, "control": zmq.DEALER, "stdin": zmq.DEALER, "iopub": zmq.SUB}
KILL_WAIT = 5.0  # seconds a killed kernel is waited for
POLL = 0.1


class KernelProcess:
    """One kernel at a time, restarted with the same connection info.

    `argv` is the kernel's command, with `{connection_file}` where the file's path goes.
    """

    def __init__(self, runtime_dir: str, argv: list[str], kernel_name: str, zygote: ZygoteLauncher | None = None):
        self.connection_file = os.path.join(runtime_dir, "connection.json")
        self.ip = os.path.join(runtime_dir, "ipc")
        self.argv = argv
        self.kernel_name = kernel_name
        self.zygote = zygote
        self.session = Session(new_id().encode("ascii"))
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | ForkedKernel | None = None
        self.forked = False  # whether the running kernel came from the zygote
        self.context = zmq.asyncio.Context()
        self._launch_kwargs: dict | None = None

    # -- the connection file ---------------------------------------------------------------

    def write_connection_file(self) -> None:
        """Written once (ports, key) and again only if it went missing, with the same info."""
        if self.ports and os.path.exists(self.connection_file):
            return
        if not self.ports:
            port = 1
            for name in PORTS:  # the lowest numbers whose socket files do not exist yet
                while os.path.exists(f"{self.ip}-{port}"):
                    port += 1
                self.ports[name] = port
                port += 1
        info = {**self.ports, "ip": self.ip, "key": self.session.key.decode(), "transport": "ipc",
                "signature_scheme": SIGNATURE_SCHEME, "kernel_name": self.kernel_name}
        with contextlib.suppress(OSError):
            os.unlink(self.connection_file)
        with os.fdopen(os.open(self.connection_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(info, indent=2))
        # Sticky: in a directory the kernel's user may write, only its owner removes the file.
        runtime_dir = os.path.dirname(self.connection_file)
        mode = os.stat(runtime_dir).st_mode
        if not mode & stat.S_ISVTX:
            with contextlib.suppress(PermissionError):
                os.chmod(runtime_dir, mode | stat.S_ISVTX)

    def connect(self, channel: str, identity: bytes | None = None) -> zmq.asyncio.Socket:
        """A fresh socket to one of the kernel's channels (iopub subscribed to everything)."""
        sock = self.context.socket(SOCKET_TYPES[channel])
        sock.linger = 1000
        if identity:
            sock.identity = identity
        if channel == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(f"ipc://{self.ip}-{self.ports[channel + '_port']}")
        return sock

    # -- the process -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def start(self, cwd: str, env: dict[str, str], **popen_kwargs) -> None:
        """Launch the kernel; `popen_kwargs` (user, group, umask...) hold for every restart."""
        self._launch_kwargs = {"cwd": cwd, "env": env, **popen_kwargs}
        await self._launch()

    async def _launch(self) -> None:
        cmd, kwargs = self._prepare()
        process = await self.zygote.fork(cmd, kwargs) if self.zygote is not None else None
        self.forked = process is not None
        self.process = process or _spawn(cmd, kwargs)

    def _prepare(self) -> tuple[list[str], dict]:
        """The kernel's command and Popen arguments, its connection file written."""
        self.write_connection_file()
        cmd = [arg.replace("{connection_file}", os.path.realpath(self.connection_file)) for arg in self.argv]
        kwargs = dict(self._launch_kwargs)
        env = kwargs["env"] = dict(kwargs["env"])
        env.pop("PYTHONEXECUTABLE", None)
        return cmd, kwargs

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        """To the kernel's process group (the kernel and what it started)."""
        process = self.process
        if process is None:
            return
        if isinstance(process, ForkedKernel) and process.poll() is not None:
            return  # gone: its group may be someone else's by now
        try:
            os.killpg(process.pid, signum)  # a session leader: its group is its pid
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def interrupt(self) -> None:
        if self.process is None:
            raise RuntimeError("Cannot interrupt kernel. No kernel is running!")
        self.send_signal(signal.SIGINT)

    async def kill(self) -> None:
        """SIGKILL to its group, then wait for it (a while) and forget it."""
        process = self.process
        if process is None:
            return
        self.send_signal(signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT
        while process.poll() is None:
            if loop.time() > deadline:
                log.warning("the killed kernel did not end within %.0fs; continuing", KILL_WAIT)
                break
            await asyncio.sleep(POLL)
        if isinstance(process, ForkedKernel):
            process.close()
        if process.returncode is not None:
            self.process = None
        self._remove_sockets()

    async def restart(self) -> None:
        """Kill the kernel and launch another with the same connection info."""
        if self._launch_kwargs is None:
            raise RuntimeError("Cannot restart the kernel. No previous call to 'start'.")
        await self.kill()
        await self._launch()

    async def shutdown(self) -> None:
        await self.kill()  # closes a forked kernel's descriptors too
        with contextlib.suppress(OSError):
            os.unlink(self.connection_file)
        self.context.destroy(linger=100)

    def _remove_sockets(self) -> None:
        for port in self.ports.values():
            with contextlib.suppress(OSError):
                os.remove(f"{self.ip}-{port}")


def _spawn(cmd: list[str], kwargs: dict) -> subprocess.Popen:
    """The kernel as PicoD's child, in a session of its own, with no stdin and no fds of ours."""
    kwargs["env"]["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits when PicoD is gone
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
