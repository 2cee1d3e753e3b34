"""The kernel bridge: one live ipykernel per sandbox, started at boot.

The kernel talks IPC inside the sandbox (TCP cannot cross a network namespace and needs no
ports). One client, with two pump tasks, routes iopub and shell replies to the execution that
asked; WebSocket relays open sockets of their own. A restarter notices a dead kernel, fails the
executions in flight with status "dead" and starts a fresh kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable

from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from traitlets.config import Config

from .execute import child_environment
from .execution import EventSink, ExecutionCollector

log = logging.getLogger("picod.kernel")

KERNEL_NAME = "picod-python"
READY_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0
DEAD = object()  # queued to an execution whose kernel died


class KernelUnavailable(RuntimeError):
    """The kernel is not ready (starting, restarting, failed, or disabled)."""


class KernelBridge:
    """Owns the kernel process and the daemon's own client to it.

    Called by the app at boot (`start`) and shutdown (`shutdown`); handlers call `execute`,
    `interrupt`, `restart` and `add_state_listener`.
    """

    def __init__(self, workspace: str, python: str | None = None, restart_poll: float = 0.5):
        self.workspace = workspace
        self.python = python or sys.executable
        self.state = "starting"
        self.failure: str | None = None
        self.ready = asyncio.Event()
        self._runtime_dir = tempfile.mkdtemp(prefix="picod-kernel-")
        self._km = self._make_manager(restart_poll)
        self._client = None
        self._waiters: dict[str, asyncio.Queue] = {}
        self._pumps: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._ready_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _make_manager(self, restart_poll: float) -> AsyncIOLoopKernelManager:
        spec_dir = os.path.join(self._runtime_dir, "kernels", KERNEL_NAME)
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump({"argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "Python 3 (sandbox)", "language": "python",
                       "interrupt_mode": "signal"}, f)
        config = Config({"KernelRestarter": {"time_to_dead": restart_poll, "restart_limit": 5}})
        km = AsyncIOLoopKernelManager(
            config=config, kernel_name=KERNEL_NAME, transport="ipc",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[os.path.join(self._runtime_dir, "kernels")]),
            connection_file=os.path.join(self._runtime_dir, "connection.json"))
        km.ip = os.path.join(self._runtime_dir, "ipc")
        km.add_restart_callback(self._on_kernel_died, "restart")
        km.add_restart_callback(self._on_kernel_lost, "dead")
        return km

    async def start(self) -> None:
        """Start the kernel and wait for kernel_info; failures are recorded, not raised."""
        try:
            await self._km.start_kernel(cwd=self.workspace, env=child_environment(None))
            self._client = self._km.client()
            self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
            self._pumps = [asyncio.ensure_future(self._pump(self._client.get_iopub_msg)),
                           asyncio.ensure_future(self._pump(self._client.get_shell_msg))]
            await self._wait_ready()
            self._km.start_restarter()
        except Exception as exc:  # the daemon still serves commands and files
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.error("kernel failed to start: %s", self.failure)
            self._notify()

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            if not await self._km.is_alive():
                raise RuntimeError("the kernel process exited during startup")
            msg_id = self._client.kernel_info()
            queue = self._waiters.setdefault(msg_id, asyncio.Queue())
            try:
                while True:
                    msg = await asyncio.wait_for(queue.get(), 1.0)
                    if msg is not DEAD and msg["header"]["msg_type"] == "kernel_info_reply":
                        break
                break
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    raise RuntimeError(f"the kernel did not answer kernel_info within {READY_TIMEOUT:.0f}s") from None
            finally:
                self._waiters.pop(msg_id, None)
        self.state = "ready"
        self.ready.set()
        log.info("kernel ready (pid namespace-local pid %s)", self._km.provisioner.pid if self._km.provisioner else "?")
        self._notify()

    async def shutdown(self) -> None:
        self._km.stop_restarter()
        for task in self._pumps:
            task.cancel()
        if self._ready_task:
            self._ready_task.cancel()
        if self._client is not None:
            self._client.stop_channels()
        if self._km.has_kernel:
            await self._km.shutdown_kernel(now=True)
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def connection_info(self) -> dict:
        return self._km.get_connection_info(session=True)

    def connect_channels(self) -> dict:
        """Fresh sockets to the kernel's shell, control, stdin and iopub, for one relay."""
        km = self._km
        return {"shell": km.connect_shell(), "control": km.connect_control(),
                "stdin": km.connect_stdin(), "iopub": km.connect_iopub()}

    @property
    def session(self):
        return self._km.session

    # -- events ----------------------------------------------------------------------------

    def add_state_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener(self.state)

    def _fail_inflight(self) -> None:
        for queue in self._waiters.values():
            queue.put_nowait(DEAD)

    def _on_kernel_died(self) -> None:
        log.warning("kernel died; restarting it")
        self.state = "dead"
        self.ready.clear()
        self._notify()
        self._fail_inflight()
        self.state = "restarting"
        self._ready_task = asyncio.ensure_future(self._after_restart())

    def _on_kernel_lost(self) -> None:
        self.state, self.failure = "failed", "the kernel kept dying and the restart limit was reached"
        log.error(self.failure)
        self._notify()

    async def _after_restart(self) -> None:
        await asyncio.sleep(0)  # let the restarter begin restart_kernel first
        try:
            await self._wait_ready()
        except Exception as exc:
            self.state, self.failure = "failed", f"restart failed: {exc}"
            log.error("kernel %s", self.failure)
            self._notify()

    async def _pump(self, receive) -> None:
        while True:
            try:
                msg = await receive()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kernel channel read failed")
                await asyncio.sleep(0.1)
                continue
            queue = self._waiters.get(msg.get("parent_header", {}).get("msg_id"))
            if queue is not None:
                queue.put_nowait(msg)

    # -- operations ------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self.state != "ready":
            detail = f": {self.failure}" if self.failure else ""
            raise KernelUnavailable(f"the kernel is {self.state}{detail}")

    async def execute(self, code: str, timeout: float | None = None, env: dict[str, str] | None = None,
                      on_event: EventSink | None = None) -> dict:
        """Run code in the kernel. On timeout interrupt it and answer status "timeout"."""
        self._require_ready()
        async with self._lock:
            self._require_ready()
            if env:
                await self._run_silent(f"__import__('os').environ.update({json.dumps(env)})")
            collector = ExecutionCollector(on_event)
            msg_id = self._client.execute(code, allow_stdin=False)
            queue = self._waiters.setdefault(msg_id, asyncio.Queue())
            try:
                status = await self._collect(queue, collector, timeout)
            finally:
                self._waiters.pop(msg_id, None)
            return collector.finish(status)

    async def _collect(self, queue: asyncio.Queue, collector: ExecutionCollector,
                       timeout: float | None) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        interrupted = False
        while not collector.done:
            remaining = None if deadline is None else deadline - loop.time()
            try:
                if remaining is not None and remaining <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(queue.get(), remaining)
            except asyncio.TimeoutError:
                if interrupted:
                    log.warning("kernel ignored an interrupt for %.0fs; restarting it", INTERRUPT_GRACE)
                    await self.restart()
                    return "timeout"
                interrupted = True
                log.info("execution exceeded %ss; interrupting the kernel", timeout)
                await self._km.interrupt_kernel()
                deadline = loop.time() + INTERRUPT_GRACE
                continue
            if msg is DEAD:
                collector.set_error("DeadKernelError", "the kernel died during this execution and was "
                                    "restarted; its variables are lost", [])
                return "dead"
            if msg["msg_type"] == "execute_reply":
                collector.shell(msg)
            else:
                collector.iopub(msg)
        if interrupted:
            if collector.error is None:
                collector.set_error("TimeoutError", f"execution exceeded {timeout}s and was interrupted", [])
            return "timeout"
        return None

    async def _run_silent(self, code: str) -> None:
        msg_id = self._client.execute(code, silent=True, store_history=False, allow_stdin=False)
        queue = self._waiters.setdefault(msg_id, asyncio.Queue())
        try:
            while True:
                msg = await asyncio.wait_for(queue.get(), 10)
                if msg is DEAD or msg["msg_type"] == "execute_reply":
                    return
        finally:
            self._waiters.pop(msg_id, None)

    async def interrupt(self) -> None:
        self._require_ready()
        await self._km.interrupt_kernel()

    async def restart(self) -> None:
        """Restart on request: executions in flight end with status "dead"; wait until ready."""
        if self.state not in ("ready", "dead", "restarting"):
            self._require_ready()
        self.state = "restarting"
        self.ready.clear()
        self._notify()
        self._fail_inflight()
        await self._km.restart_kernel(now=True)
        await self._wait_ready()
