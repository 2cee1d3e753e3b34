"""Kernel zygotes, the gateway's side: one process per (sandbox Python, preload, environment)
that imported ipykernel and the preload once, from which every warm kernel is forked into its
sandbox, so that the imported libraries' pages are shared copy-on-write between sandboxes
instead of copied into each (the zygote's own code is in `kernel_zygote/`).

Nothing writable is shared: a page a kernel writes becomes its own; what stays shared is what
the zygote wrote before the fork, the same in every kernel and holding nothing of any sandbox
(the zygote never sees a key or a token: a kernel reads its connection file inside its sandbox).

What one zygote's kernels do share, and why we accept it:

- **Address layout.** They are copies of one process, so libraries, heap and stack sit at the
  zygote's addresses in all of them: ASLR holds per zygote, not per kernel (as on Android).
  Knowing the layout helps only an exploit of memory corruption in another sandbox's kernel,
  and no sandbox can feed input to another's kernel.
- **Hash seed.** str and bytes hashes are salted once per interpreter, so they are equal in
  every kernel of one zygote. Hash flooding, likewise, needs to feed the victim's dictionaries.
  Each zygote process draws a fresh salt (PYTHONHASHSEED is never set for it, unless the
  template's environment sets it, as it would for spawned kernels), so the salt changes with
  every zygote generation: each gateway start, each restart after a death, each preload.
- **Random state** is *not* shared: each kernel reseeds `random` and numpy's global generator
  from the OS (see `kernel_zygote/kernel.py`).
- **BLAS and OpenMP pools** are pinned to one thread in the zygote (a fork keeps only the
  forking thread), so forked kernels compute single-threaded; sandboxes get one core by
  default anyway. A template that sets those thread counts itself gets spawned kernels.

A zygote that cannot start (or refuses: more than one thread, descriptors left open by an
import) or dies is logged with the reason; meanwhile kernels are spawned as before, and it is
tried again after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from . import packets

log = logging.getLogger("kernelcube.local")

START_TIMEOUT = 180.0  # importing the preload on a busy machine
FORK_TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024
RETRY_FIRST, RETRY_MAX = 5.0, 600.0
SOURCE_DIR = "/opt/kernelcube"  # where the zygote sees its own package (read-only)
BOOTSTRAP = (f"import sys; sys.path.insert(0, {SOURCE_DIR!r}); from kernel_zygote.server import main; "
             f"sys.path.remove({SOURCE_DIR!r}); sys.exit(main())")
# Thread pools that would start threads at import; a zygote must stay single-threaded.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Set by ipykernel before the preload runs in a spawned kernel; matplotlib reads it at import.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class ZygoteUnavailable(RuntimeError):
    """No kernel from a zygote this time; the message says why (the kernel is spawned)."""


@dataclass(frozen=True)
class ZygoteSpec:
    """What makes one zygote: its sandbox Python, preload, and the environment its imports
    see (that of the kernels it makes). `argv` is the command up to the channel argument."""

    python: str
    preload: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]


def zygote_environment(kernel_env: dict[str, str]) -> dict[str, str] | None:
    """The zygote's environment: its kernels' own, plus single-threaded pools and the backend
    ipykernel would choose; None when the kernels' environment asks for threads itself."""
    if any(kernel_env.get(name, "1") != "1" for name in THREAD_VARIABLES):
        return None
    return {**dict.fromkeys(THREAD_VARIABLES, "1"), "MPLBACKEND": INLINE_BACKEND, **kernel_env}


class Zygote:
    """One zygote process and the gateway's end of its socket."""

    def __init__(self, spec: ZygoteSpec, log_path: str):
        self.spec = spec
        self.log_path = log_path
        self.state = "starting"  # then "ready", or "failed" (never became ready), or "dead"
        self.reason = ""
        self.settled = asyncio.Event()  # set when the state leaves "starting"
        self.ended = asyncio.Event()  # set when it can serve no more (failed, dead or closed)
        self._proc: subprocess.Popen | None = None
        self._sock = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        started = time.monotonic()
        ours, theirs = packets.pair()
        self._sock = ours
        try:
            with open(self.log_path, "ab") as out:  # noqa: ASYNC230 -- opening is instant
                self._proc = subprocess.Popen(  # noqa: ASYNC220 -- returns at exec
                    [*self.spec.argv, "--channel-fd", str(theirs.fileno())], env=dict(self.spec.env),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(theirs.fileno(),),
                    start_new_session=True, cwd="/")
        except OSError as exc:
            return self._settle("failed", f"cannot start: {exc}")
        finally:
            theirs.close()
        try:
            message, _ = await asyncio.wait_for(packets.receive(ours, MAX_MESSAGE), START_TIMEOUT)
        except asyncio.TimeoutError:
            return self._settle("failed", f"not ready within {START_TIMEOUT:.0f}s")
        except (OSError, ValueError) as exc:
            return self._settle("failed", f"no ready message: {exc}")
        if message is None:
            return self._settle("failed", await self._exit_reason())
        problem = _unfit(message.get("ready"))
        if problem:
            return self._settle("failed", problem)
        ready = message["ready"]
        failed = {name: error for name, error in ready["preload"].items() if error != "ok"}
        log.info("kernel zygote ready in %.1fs for %s (preload %s%s; pid %d)", time.monotonic() - started,
                 self.spec.python, ", ".join(self.spec.preload) or "none",
                 f"; failed, kernels will report it: {failed}" if failed else "", self._proc.pid)
        self._watcher = asyncio.ensure_future(self._watch())
        self._settle("ready", "")

    def _settle(self, state: str, reason: str) -> None:
        if self.state in ("failed", "dead"):
            return  # told once (its watcher and a request may both find it gone)
        if state != "ready":
            self._kill()
            log.warning("kernel zygote for %s %s: %s; kernels are spawned instead until it is back",
                        self.spec.python, "failed to start" if state == "failed" else "died", reason)
        self.state, self.reason = state, reason
        self.settled.set()
        if state != "ready":
            self.ended.set()

    async def _watch(self) -> None:
        await _exited(self._proc.pid)
        if self.state == "ready":
            self._settle("dead", await self._exit_reason())

    async def _exit_reason(self) -> str:
        if self._proc is not None:  # its socket closes just before bubblewrap exits
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_exited(self._proc.pid), 2.0)
        code = self._proc.poll() if self._proc else None
        tail = await asyncio.to_thread(_tail, self.log_path)
        return f"exit status {code}" + (f": {tail}" if tail else "")

    async def fork(self, params: dict, fds: list[tuple[str, int]]) -> int:
        """Ask for a supervisor process (which will enter the sandbox and fork the kernel)."""
        async with self._lock:
            if self.state != "ready":
                raise ZygoteUnavailable(f"the zygote is {self.state}: {self.reason}")
            try:
                packets.send(self._sock, {"fork": {**params, "fds": [role for role, _ in fds]}},
                             [fd for _, fd in fds])
                reply, _ = await asyncio.wait_for(packets.receive(self._sock, MAX_MESSAGE), FORK_TIMEOUT)
            except (OSError, ValueError, asyncio.TimeoutError) as exc:
                # A late answer would be taken for the next request's: start afresh.
                self._settle("dead", f"its channel failed: {exc!r}")
                raise ZygoteUnavailable(f"the zygote did not answer: {exc!r}") from None
        if reply is None:
            self._settle("dead", await self._exit_reason())
            raise ZygoteUnavailable("the zygote exited")
        if not isinstance(reply.get("forked"), int):
            raise ZygoteUnavailable(f"the zygote refused: {reply.get('error')}")
        return reply["forked"]

    def _kill(self) -> None:
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        if self._proc is not None and self._proc.poll() is None:
            # bubblewrap; the zygote below it dies with it (--die-with-parent).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1)  # a SIGKILLed process is gone at once
        if self._sock is not None:
            self._sock.close()

    def close(self) -> None:
        self.state, self.reason = "dead", "closed"
        self.settled.set()
        self.ended.set()
        self._kill()


class Zygotes:
    """The gateway's zygotes, each started on first use and kept: remade after a death, and
    retried after a failed start, after a back-off that doubles while they keep failing."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self._zygotes: dict[ZygoteSpec, Zygote] = {}
        self._keepers: dict[ZygoteSpec, asyncio.Task] = {}

    def prepare(self, spec: ZygoteSpec) -> None:
        """Start the spec's zygote (importing while the sandbox that wants it starts)."""
        if spec not in self._keepers:
            self._zygotes[spec] = self._new(spec)
            self._keepers[spec] = asyncio.ensure_future(self._keep(spec))

    def _new(self, spec: ZygoteSpec) -> Zygote:
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        name = f"zygote-{hashlib.sha256(repr((spec.python, spec.preload)).encode()).hexdigest()[:12]}.log"
        return Zygote(spec, os.path.join(self.log_dir, name))

    async def _keep(self, spec: ZygoteSpec) -> None:
        failures = 0
        while True:
            zygote = self._zygotes[spec]
            started = time.monotonic()
            await zygote.start()
            if zygote.state == "ready":
                await zygote.ended.wait()
            # A zygote that served a while and died is remade at once; one that keeps failing,
            # less and less often.
            failures = 0 if time.monotonic() - started > RETRY_MAX else failures + 1
            await asyncio.sleep(0 if failures == 0 else min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))
            self._zygotes[spec] = self._new(spec)

    async def ready(self, spec: ZygoteSpec, wait: float) -> Zygote:
        """The spec's zygote once ready, waiting up to `wait` seconds while it starts."""
        self.prepare(spec)
        zygote = self._zygotes[spec]
        if zygote.state == "starting":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(zygote.settled.wait(), wait)
        if zygote.state != "ready":
            raise ZygoteUnavailable(f"the zygote is {zygote.state}" + (f": {zygote.reason}" if zygote.reason else ""))
        return zygote

    def close(self) -> None:
        for task in self._keepers.values():
            task.cancel()
        for zygote in self._zygotes.values():
            zygote.close()
        self._keepers.clear()
        self._zygotes.clear()


def _unfit(ready) -> str | None:
    """Why a zygote's ready message disqualifies it; None when it may serve."""
    if not isinstance(ready, dict) or not isinstance(ready.get("preload"), dict):
        return "its ready message is not one"
    if ready.get("threads") != 1:
        return (f"it runs {ready.get('threads')} threads after its imports (a preloaded module started "
                "threads), and forking it would be unsafe")
    if ready.get("fds"):
        return f"its imports left descriptors open, which every kernel would inherit: {ready['fds']}"
    return None


async def _exited(pid: int) -> None:
    """Until the process exits (a pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        await packets.readable(fd)
    finally:
        os.close(fd)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""
