"""The kernel bridge: one live ipykernel per sandbox, started at boot.

The kernel talks IPC inside the sandbox (TCP cannot cross a network namespace and needs no
ports). One client, with two pump tasks, routes iopub and shell replies to the execution that
asked; WebSocket relays open sockets of their own. A watcher notices a dead kernel, fails the
executions in flight with status "dead" and starts a fresh kernel.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .execute import child_environment
from .execution import DEFAULT_MAX_OUTPUT, EventSink, ExecutionCollector
from .identity import RunAs, kwargs_for
from .session import feed_identities

if TYPE_CHECKING:
    from .kernel_process import KernelProcess

log = logging.getLogger("picod.kernel")

KERNEL_NAME = "picod-python"
READY_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0
# An execution's `env` holds for that execution only: the values it replaces are kept on the sys
# module (out of the user's namespace) and put back afterwards. JSON is a Python literal here.
_SCOPE_ENV = ("__import__('sys').__dict__.__setitem__('__kernelcube_env__', "
              "{{k: __import__('os').environ.get(k) for k in {env}}}) or __import__('os').environ.update({env})")
_RESTORE_ENV = ("[__import__('os').environ.pop(k, None) if v is None else __import__('os').environ.__setitem__(k, v) "
                "for k, v in __import__('sys').__dict__.pop('__kernelcube_env__', {}).items()]")
IOPUB_GRACE = 5.0  # seconds iopub may trail the execute_reply
MAX_RESTART_FAILURES = 5
# Run in every kernel at start: `%pip` that fails (no network, no such package) raises, so the
# execution reports an error instead of "ok" with a failure buried in its output.
KERNEL_STARTUP = """\
def _picod_strict_pip():
    shell = get_ipython()
    original = shell.find_line_magic("pip")
    if original is None:
        return

    def pip(line):
        original(line)
        status = shell.user_ns.get("_exit_code", 0)
        if status:
            raise RuntimeError(f"pip exited with status {status}; see its output above")

    pip.__doc__ = original.__doc__
    shell.register_magic_function(pip, "line", "pip")


_picod_strict_pip()
del _picod_strict_pip
"""


PRELOAD_TIMEOUT = 120.0
# Imports the preload's modules one by one, in a namespace of its own (the user's stays empty);
# what failed, and why, is left on the sys module for the user expression below to take away.
_PRELOAD_IMPORTS = """\
import importlib, json, sys
failed = {}
for name in MODULES:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # an import may raise anything, SystemExit included
        failed[name] = f"{type(exc).__name__}: {exc}"
sys.__dict__["__kernelcube_preload__"] = json.dumps(failed)
"""
_PRELOAD_RESULT = "__import__('sys').__dict__.pop('__kernelcube_preload__', '{}')"
# After the preload: its garbage collected and the freed memory handed back to the system, so
# that an idle warm kernel holds only what it keeps (glibc keeps freed heap pages otherwise).
_RELEASE_MEMORY = ("__import__('gc').collect(), getattr(__import__('ctypes').CDLL(None), 'malloc_trim', "
                   "lambda pad: 0)(0)")


class Dead(str):
    """Queued to the requests in flight when their kernel dies; the text says why (or is empty)."""


class KernelUnavailable(RuntimeError):
    """The kernel is not ready (starting, restarting, failed, or disabled)."""


class KernelBridge:
    """Owns the kernel process and the daemon's own client to it.

    Called by the app at boot (`start`) and shutdown (`shutdown`); handlers call `execute`,
    `interrupt`, `restart` and `add_state_listener`.
    """

    def __init__(self, workspace: str, python: str | None = None, restart_poll: float = 0.5,
                 run_as: RunAs | None = None, max_output: int = DEFAULT_MAX_OUTPUT,
                 preload_modules: tuple[str, ...] = (), preload_code: str = "",
                 kernel_channel: int | None = None):
        self.workspace = workspace
        self.kernel_channel = kernel_channel  # the gateway's zygote, when it offers one
        self.preload_modules = tuple(preload_modules)
        self.preload_code = preload_code
        # After each start: {"modules": {name: "ok" or the error}, "code": "ok" or the error, "seconds"}.
        self.preload_report: dict | None = None
        self.python = python or sys.executable
        self.run_as = run_as
        self.max_output = max_output
        self.state = "starting"
        self.failure: str | None = None
        self.ready = asyncio.Event()
        self._runtime_dir = tempfile.mkdtemp(prefix="picod-kernel-")
        if run_as:  # the kernel, as the user, binds its IPC sockets here
            os.chown(self._runtime_dir, -1, run_as.gid)
            os.chmod(self._runtime_dir, 0o2770)
        self._kernel = self._make_kernel()
        # The daemon's own client: its session, and its shell and iopub sockets once started.
        self._session = self._kernel.session.clone()
        self._shell = self._iopub = None
        self._waiters: dict[str, asyncio.Queue] = {}
        self._pumps: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._watcher: asyncio.Task | None = None
        self._restart_poll = restart_poll

    # -- lifecycle -------------------------------------------------------------------------

    def _make_kernel(self) -> KernelProcess:
        # Imported here, not at the top: a daemon without a kernel (--no-kernel) never loads
        # zmq (some hundredths of a second and a few MiB at start).
        from .forked_kernel import KernelChannel, ZygoteLauncher
        from .kernel_process import KernelProcess

        startup = os.path.join(self._runtime_dir, "startup.py")
        with open(startup, "w") as f:
            f.write(KERNEL_STARTUP)
        # History in memory: `In`, `Out` and %history work, but kernels never share (or lock) a
        # history database on disk, and nothing is left behind in the workspace or HOME.
        argv = [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                "--HistoryManager.hist_file=:memory:", f"--IPKernelApp.exec_files={startup}"]
        zygote = None
        if self.kernel_channel is not None:
            # Kernels forked from the gateway's zygote (and spawned when it cannot give one).
            zygote = ZygoteLauncher(KernelChannel(self.kernel_channel),
                                    tuple(sorted({name.split(".")[0] for name in self.preload_modules})))
        return KernelProcess(self._runtime_dir, argv, KERNEL_NAME, zygote)

    @property
    def forked(self) -> bool:
        """Whether the running kernel was forked from the gateway's zygote."""
        return self._kernel.forked

    async def start(self) -> None:
        """Start the kernel and wait for kernel_info; failures are recorded, not raised."""
        try:
            if self.run_as:
                # Written first so that the kernel, as the user, may read it (group, 0640).
                self._kernel.write_connection_file()
                os.chmod(self._kernel.connection_file, 0o640)
            await self._kernel.start(self.workspace, child_environment(None), **kwargs_for(self.run_as))
            self._shell = self._kernel.connect("shell", identity=self._session.bsession)
            self._iopub = self._kernel.connect("iopub")
            self._pumps = [asyncio.ensure_future(self._pump(self._iopub)),
                           asyncio.ensure_future(self._pump(self._shell))]
            await self._wait_ready()
            self._watcher = asyncio.ensure_future(self._watch())
        except Exception as exc:  # the daemon still serves commands and files
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.error("kernel failed to start: %s", self.failure)
            self._notify()

    @contextlib.contextmanager
    def _replies(self, msg_id: str) -> Iterator[asyncio.Queue]:
        """The queue the pumps fill with replies to one request, for as long as it is awaited."""
        self._waiters[msg_id] = queue = asyncio.Queue()
        try:
            yield queue
        finally:
            self._waiters.pop(msg_id, None)

    async def _wait_ready(self) -> None:
        """Ready means both channels are proven live: a kernel_info_reply on shell *and* the
        kernel's iopub status for that same request. A kernel answers shell before our iopub
        subscription has reached it (at start, and again after every restart, when the sockets
        reconnect): output published then is dropped, and an execution whose final `idle` is
        lost would wait forever. So keep asking until iopub answers too (as jupyter_server's
        kernel nudge does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not await self._kernel_info_on_both_channels():
            if not self._kernel.is_alive():
                raise RuntimeError("the kernel process exited during startup")
            if loop.time() > deadline:
                raise RuntimeError(f"the kernel did not answer kernel_info on shell and iopub "
                                   f"within {READY_TIMEOUT:.0f}s")
        # IPython imports much on its first execution (~20 ms): pay that before reporting ready.
        # A silent run leaves no trace: no output, no history, no execution count.
        await self._run_silent("None")
        if self.preload_modules or self.preload_code:
            await self._preload()
        self.state = "ready"
        self.ready.set()
        log.info("kernel ready (pid namespace-local pid %s)", self._kernel.pid or "?")
        self._notify()

    async def _kernel_info_on_both_channels(self, wait: float = 1.0, after_reply: float = 0.05) -> bool:
        """One kernel_info round. Once the reply is in, its iopub status is due within
        milliseconds if our subscription is live; when it is not, ask again soon."""
        replied = published = False
        with self._replies(self._request("kernel_info_request", {})) as queue:
            try:
                while not (replied and published):
                    msg = await asyncio.wait_for(queue.get(), after_reply if replied else wait)
                    if isinstance(msg, Dead):
                        return False
                    kind = msg["header"]["msg_type"]
                    replied = replied or kind == "kernel_info_reply"
                    published = published or kind == "status"
            except asyncio.TimeoutError:
                return False
        return True

    async def shutdown(self) -> None:
        for task in [*self._pumps, self._watcher]:
            if task is not None:
                task.cancel()
        for sock in (self._shell, self._iopub):
            if sock is not None:
                sock.close()
        await self._kernel.shutdown()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def connect_channels(self, identity: bytes | None = None) -> dict:
        """Fresh sockets to the kernel's shell, control, stdin and iopub, for one relay (shell
        and stdin must share an identity for input requests to reach the relay)."""
        return {name: self._kernel.connect(name, None if name == "iopub" else identity)
                for name in ("shell", "control", "stdin", "iopub")}

    @property
    def session(self):
        """The kernel's session (key, signature scheme), for clients to clone."""
        return self._kernel.session

    def _request(self, msg_type: str, content: dict) -> str:
        """Send a request on the daemon's shell socket; its msg_id."""
        msg = self._session.msg(msg_type, content)
        self._shell.send_multipart(self._session.serialize(msg))
        return msg["msg_id"]

    def _execute(self, code: str, silent: bool = False, store_history: bool = True,
                 user_expressions: dict | None = None) -> str:
        return self._request("execute_request", {
            "code": code, "silent": silent, "store_history": store_history,
            "user_expressions": user_expressions or {}, "allow_stdin": False, "stop_on_error": True})

    # -- events ----------------------------------------------------------------------------

    def add_state_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener(self.state)

    def _fail_inflight(self, cause: str = "") -> None:
        for queue in self._waiters.values():
            queue.put_nowait(Dead(cause))

    async def _watch(self) -> None:
        """Notice a dead kernel, fail what is in flight, restart it; give up after a few tries."""
        failures = 0
        while True:
            await asyncio.sleep(self._restart_poll)
            if self.state == "ready":
                if self._kernel.is_alive():
                    continue
                cause = self._death_cause()
                log.warning("kernel died%s; restarting it", cause)
                self.state = "dead"
                self.ready.clear()
                self._notify()
                self._fail_inflight(cause)
            elif self.state != "dead":
                continue  # a restart on request is under way
            try:
                await self.restart()
                failures = 0
            except Exception as exc:
                failures += 1
                self.state = "dead"
                log.error("kernel restart %d/%d failed: %s", failures, MAX_RESTART_FAILURES, exc)
                if failures >= MAX_RESTART_FAILURES:
                    self.state, self.failure = "failed", f"the kernel could not be restarted: {exc}"
                    self._notify()
                    return

    async def _pump(self, sock) -> None:
        """Route what the kernel sends on one channel to the queue of the request it answers.
        This is the hot path of every execution, so it reads the socket itself rather than
        with a poll before each (no date parsed, no signature checked: a signature proves
        nothing here, the kernel holds the key)."""
        while True:
            try:
                msg = _parse(await sock.recv_multipart())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kernel channel read failed")
                await asyncio.sleep(0.1)
                continue
            queue = self._waiters.get(msg["parent_header"].get("msg_id"))
            if queue is not None:
                queue.put_nowait(msg)

    # -- operations ------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if self.state != "ready":
            detail = f": {self.failure}" if self.failure else ""
            raise KernelUnavailable(f"the kernel is {self.state}{detail}")

    async def _until_ready(self, timeout: float | None) -> None:
        """A kernel that is starting or restarting (after a death, say) is waited for, up to
        the request's own timeout; a kernel that failed for good is refused at once."""
        if self.state in ("starting", "restarting", "dead"):
            settled = asyncio.Event()
            forget = self.add_state_listener(lambda state: state in ("ready", "failed") and settled.set())
            try:
                await asyncio.wait_for(settled.wait(), min(timeout or READY_TIMEOUT, READY_TIMEOUT))
            except asyncio.TimeoutError:
                pass
            finally:
                forget()
        self._require_ready()

    async def execute(self, code: str, timeout: float | None = None, env: dict[str, str] | None = None,
                      on_event: EventSink | None = None) -> dict:
        """Run code in the kernel. On timeout interrupt it and answer status "timeout"."""
        await self._until_ready(timeout)
        async with self._lock:
            self._require_ready()
            if env:
                await self._run_silent(_SCOPE_ENV.format(env=json.dumps(env)))
            try:
                collector = ExecutionCollector(on_event, self.max_output)
                with self._replies(self._execute(code)) as queue:
                    status = await self._collect(queue, collector, timeout)
                return collector.finish(status)
            finally:
                if env and self.state == "ready":  # a restarted kernel has a fresh environment anyway
                    await self._run_silent(_RESTORE_ENV)

    async def set_env(self, env: dict[str, str]) -> None:
        """Set variables in the kernel's environment for the rest of its life (unlike an
        execution's `env`), without a trace in its history or execution count."""
        await self._until_ready(None)
        async with self._lock:
            self._require_ready()
            await self._run_silent(f"__import__('os').environ.update({json.dumps(env)})")

    async def _collect(self, queue: asyncio.Queue, collector: ExecutionCollector,
                       timeout: float | None) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        interrupted = False
        while not collector.done:
            remaining = None if deadline is None else deadline - loop.time()
            if collector.replied:  # only iopub's trailing messages are due now
                remaining = IOPUB_GRACE if remaining is None else min(remaining, IOPUB_GRACE)
            try:
                if remaining is not None and remaining <= 0:
                    raise asyncio.TimeoutError
                msg = await _next(queue, remaining)
            except asyncio.TimeoutError:
                if collector.replied and not interrupted and (deadline is None or loop.time() < deadline):
                    # The kernel finished, but its final iopub `idle` never came: iopub lost
                    # messages. Answer with what arrived rather than wait forever.
                    log.warning("no iopub idle %.0fs after the execute_reply; output may be incomplete",
                                IOPUB_GRACE)
                    break
                if interrupted:
                    log.warning("kernel ignored an interrupt for %.0fs; restarting it", INTERRUPT_GRACE)
                    collector.set_error("TimeoutError", f"execution exceeded {timeout}s and ignored the "
                                        f"interrupt for {INTERRUPT_GRACE:.0f}s; the kernel was restarted "
                                        "and its variables are lost", [])
                    await self.restart()
                    return "timeout"
                interrupted = True
                log.info("execution exceeded %ss; interrupting the kernel", timeout)
                await self._kernel.interrupt()
                deadline = loop.time() + INTERRUPT_GRACE
                continue
            if isinstance(msg, Dead):
                collector.set_error("DeadKernelError", f"the kernel died during this execution{msg} "
                                    "and was restarted; its variables are lost", [])
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

    def _death_cause(self) -> str:
        code = self._kernel.returncode
        if code == -signal.SIGKILL:
            return (" (killed by SIGKILL: most often the sandbox ran out of memory; its memory limit "
                    "counts the files in its workspace and /tmp too)")
        if code is not None and code < 0:
            return f" (killed by signal {signal.Signals(-code).name})"
        return f" (exit code {code})" if code else ""

    async def _run_silent(self, code: str, timeout: float = 10, user_expressions: dict | None = None) -> dict | None:
        """Run code without a trace (no output, history or execution count); the execute_reply's
        content, or None when the kernel died meanwhile."""
        with self._replies(self._execute(code, silent=True, store_history=False,
                                         user_expressions=user_expressions)) as queue:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                msg = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                if isinstance(msg, Dead):
                    return None
                if msg["msg_type"] == "execute_reply":
                    return msg["content"]

    async def _preload(self) -> None:
        """Import the preload's modules, then run its code. A failure is reported (log, /health)
        and skipped: the kernel still becomes ready, without what failed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        report: dict = {"modules": {}, "code": None}
        try:
            if self.preload_modules:
                cell = f"exec({_PRELOAD_IMPORTS!r}, {{'MODULES': {list(self.preload_modules)!r}}})"
                reply = await self._run_silent(cell, PRELOAD_TIMEOUT, {"failed": _PRELOAD_RESULT})
                failed = _preload_failures(reply, self.preload_modules)
                report["modules"] = {name: failed.get(name, "ok") for name in self.preload_modules}
            if self.preload_code:
                reply = await self._run_silent(self.preload_code, PRELOAD_TIMEOUT)
                report["code"] = _reply_outcome(reply)
            await self._run_silent(_RELEASE_MEMORY)
        except asyncio.TimeoutError:
            await self._kernel.interrupt()
            problem = f"the preload took more than {PRELOAD_TIMEOUT:.0f}s and was interrupted"
            report["modules"] = {name: report["modules"].get(name, problem) for name in self.preload_modules}
            if self.preload_code and report["code"] is None:
                report["code"] = problem
        report["seconds"] = round(loop.time() - started, 3)
        self.preload_report = report
        failures = {k: v for k, v in report["modules"].items() if v != "ok"}
        if report["code"] not in (None, "ok"):
            failures["(code)"] = report["code"]
        if failures:
            log.warning("preload failed in part (the kernel serves without it): %s", failures)
        else:
            log.info("preloaded in %.2fs", report["seconds"])

    async def interrupt(self) -> None:
        self._require_ready()
        await self._kernel.interrupt()

    async def restart(self) -> None:
        """Restart on request: executions in flight end with status "dead"; wait until ready."""
        if self.state not in ("ready", "dead"):
            self._require_ready()
        self.state = "restarting"
        self.ready.clear()
        self._notify()
        self._fail_inflight()
        try:
            await self._kernel.restart()
            await self._wait_ready()
        except Exception as exc:
            # "dead": the watcher keeps trying (and gives up, "failed", after a few attempts).
            self.state = "dead"
            raise KernelUnavailable(f"the kernel could not be restarted: {exc}") from exc


async def _next(queue: asyncio.Queue, timeout: float | None):
    """The queue's next item; a message already waiting is taken without wait_for's task."""
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        return await asyncio.wait_for(queue.get(), timeout)


def _parse(parts: list[bytes]) -> dict:
    """A message from the kernel's wire parts, shaped as Jupyter clients shape it (dates stay
    ISO strings, as they are sent on anyway)."""
    _, frames = feed_identities(parts)  # signature, header, parent, metadata, content, buffers
    header = json.loads(frames[1])
    return {"header": header, "msg_id": header.get("msg_id"), "msg_type": header.get("msg_type"),
            "parent_header": json.loads(frames[2]), "metadata": json.loads(frames[3]),
            "content": json.loads(frames[4]), "buffers": frames[5:]}


def _preload_failures(reply: dict | None, modules: tuple[str, ...]) -> dict[str, str]:
    """{module: error} from the import cell's reply: all of them when it did not run at all."""
    if reply is None or reply.get("status") != "ok":
        return dict.fromkeys(modules, _reply_outcome(reply))
    try:
        text = reply["user_expressions"]["failed"]["data"]["text/plain"]
        return json.loads(ast.literal_eval(text))
    except (KeyError, TypeError, ValueError, SyntaxError):
        return dict.fromkeys(modules, "the kernel did not say which imports succeeded")


def _reply_outcome(reply: dict | None) -> str:
    if reply is None:
        return "the kernel died while preloading"
    if reply.get("status") == "ok":
        return "ok"
    return f"{reply.get('ename', 'Error')}: {reply.get('evalue', '')}"
