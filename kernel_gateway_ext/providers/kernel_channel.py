"""A sandbox's channel to its kernel zygote: how its PicoD asks for a kernel.

One SOCK_SEQPACKET socket pair per sandbox: the gateway keeps one end, PicoD inherits the
other (bubblewrap passes it down; PicoD makes it non-inheritable, and user code, another uid,
cannot reach PicoD's descriptors). The socket has no path. So a request can only come from
that sandbox's PicoD, and the gateway answers it with a kernel in *that* sandbox only: the
namespaces, cgroups, ids and limits are the gateway's own record of the sandbox, never taken
from the request. The request supplies only what PicoD would have given a spawned kernel (its
arguments, environment, working directory and umask), and the kernel applies those once it is
the sandbox's unprivileged user, inside the sandbox.

Protocol, one JSON object per packet:
  PicoD -> gateway: {"kernel": {"python", "argv", "env", "cwd", "umask"}}
  gateway -> PicoD: {"ok": true, "pid": <pid in the sandbox>} with the read end of the kernel's
                    status pipe attached, or {"ok": false, "error": why} (PicoD then spawns)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass

from . import packets, userns
from .zygote import Zygotes, ZygoteSpec, ZygoteUnavailable

log = logging.getLogger("kernelcube.local")

MAX_REQUEST = 256 * 1024
ZYGOTE_WAIT = 60.0  # a zygote that is still importing, at the gateway's start
REPORT_TIMEOUT = 30.0
OTHER_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


@dataclass
class SandboxFacts:
    """The gateway's record of one sandbox, all a kernel is placed by."""

    userns_fd: int  # the sandbox's user namespace (ours: we made it)
    cgroup_procs: list[str]
    log_path: str
    rlimits: dict[str, int]


class KernelChannel:
    def __init__(self, zygotes: Zygotes, spec: ZygoteSpec, facts: SandboxFacts):
        self.zygotes = zygotes
        self.spec = spec
        self.facts = facts
        self.ours, self.theirs = packets.pair()  # `theirs` goes to PicoD, then is closed here
        self._bwrap_pid: int | None = None
        self._task: asyncio.Task | None = None

    def attach(self, bwrap_pid: int) -> None:
        """Serve PicoD's requests, now that its sandbox (under this bubblewrap) exists."""
        self._bwrap_pid = bwrap_pid
        self.theirs.close()
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        """One request at a time, in order, until PicoD closes its end."""
        while True:
            try:
                message, _ = await packets.receive(self.ours, MAX_REQUEST)
            except ValueError as exc:
                message = {"bad": str(exc)}
            except OSError:
                return
            if message is None:
                return
            try:
                pid, status = await self._kernel(message)
            except ZygoteUnavailable as exc:
                self._reply({"ok": False, "error": str(exc)})
                continue
            try:
                self._reply({"ok": True, "pid": pid}, [status])
            finally:
                os.close(status)

    def _reply(self, message: dict, fds: list[int] = ()) -> None:
        with contextlib.suppress(OSError):  # PicoD is gone
            packets.send(self.ours, message, fds)

    async def _kernel(self, message: dict) -> tuple[int, int]:
        request = _checked(message)
        if request["python"] != self.spec.python:
            raise ZygoteUnavailable(f"the kernel's Python is not the zygote's ({self.spec.python})")
        zygote = await self.zygotes.ready(self.spec, ZYGOTE_WAIT)
        try:
            status, status_end = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            raise ZygoteUnavailable(f"cannot make the kernel's status pipe: {exc}") from None
        try:
            outcome = await self._fork(zygote, request, status_end)
        except BaseException:
            os.close(status)
            raise
        if "pid" not in outcome:
            os.close(status)
            log.warning("a kernel from the zygote could not start in its sandbox (%s); spawning it",
                        outcome.get("error"))
            raise ZygoteUnavailable(f"the kernel could not start in the sandbox: {outcome.get('error')}")
        return outcome["pid"], status

    async def _fork(self, zygote, request: dict, status_end: int) -> dict:
        """Have the zygote fork a supervisor with the sandbox's descriptors; its report. Only
        the supervisor keeps the writing ends: end of file on them means it is gone."""
        ours = [status_end]
        report = None
        try:
            namespaces = _open_namespaces(self._bwrap_pid, self.facts.userns_fd)
            ours += namespaces.values()
            fds = [("status", status_end)]
            report, report_end = os.pipe2(os.O_CLOEXEC)
            ours.append(report_end)
            fds.append(("report", report_end))
            ours.append(os.open(self.facts.log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
            fds.append(("log", ours[-1]))
            for path in self.facts.cgroup_procs:
                ours.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                fds.append(("cgroup", ours[-1]))
            fds += [(f"ns:{kind}", fd) for kind, fd in namespaces.items()]
            params = {"uid": userns.USER_UID, "gid": userns.SANDBOX_GID, "rlimits": self.facts.rlimits,
                      **{key: request[key] for key in ("argv", "env", "cwd", "umask")}}
            await zygote.fork(params, fds)
            packets.close_all(ours)
            ours = []
            return await _read_report(report)
        except OSError as exc:
            raise ZygoteUnavailable(f"cannot prepare the kernel's descriptors: {exc}") from None
        finally:
            packets.close_all(ours + ([report] if report is not None else []))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for sock in (self.ours, self.theirs):
            sock.close()
        packets.close_all([self.facts.userns_fd])


def _checked(message: dict) -> dict:
    """PicoD's request, or ZygoteUnavailable saying what is wrong with it."""
    body = message.get("kernel")
    try:
        if not isinstance(body, dict):
            raise ValueError(message.get("bad") or "no 'kernel' request")
        argv, env, cwd, umask = body.get("argv"), body.get("env"), body.get("cwd"), body.get("umask")
        if not (isinstance(argv, list) and all(isinstance(a, str) and "\0" not in a for a in argv)):
            raise ValueError("argv must be a list of strings")
        if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                                              and "\0" not in k + v for k, v in env.items())):
            raise ValueError("env must map names to strings")
        if not (isinstance(cwd, str) and os.path.isabs(cwd) and "\0" not in cwd):
            raise ValueError("cwd must be an absolute path")
        if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
            raise ValueError("umask must be 0..0o777")
        if not isinstance(body.get("python"), str):
            raise ValueError("python must be a path")
    except ValueError as exc:
        raise ZygoteUnavailable(f"bad kernel request: {exc}") from None
    return body


def _open_namespaces(bwrap_pid: int | None, userns_fd: int) -> dict[str, int]:
    """The sandbox's namespaces, from its init (bubblewrap's child, pid 1 in the sandbox), which
    must be in the user namespace we made for the sandbox: a bubblewrap pid reused by another
    process can never pass for the sandbox."""
    init = _first_child(bwrap_pid) if bwrap_pid else None
    if init is None:
        raise ZygoteUnavailable("the sandbox's init process is not running")
    try:
        directory = os.open(f"/proc/{init}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ZygoteUnavailable(f"the sandbox's init is gone: {exc}") from None
    opened: list[int] = []
    try:
        theirs, ours = os.stat("ns/user", dir_fd=directory), os.fstat(userns_fd)
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            raise ZygoteUnavailable("the sandbox's init is not in the sandbox's user namespace")
        namespaces = {}
        for kind in OTHER_NAMESPACES:
            namespaces[kind] = os.open(f"ns/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
            opened.append(namespaces[kind])
        namespaces["user"] = os.dup(userns_fd)
        return namespaces
    except OSError as exc:
        packets.close_all(opened)
        raise ZygoteUnavailable(f"cannot open the sandbox's namespaces: {exc}") from None
    finally:
        os.close(directory)


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


async def _read_report(fd: int) -> dict:
    """The supervisor's one line: {"pid": n} or {"error": why}."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    deadline = loop.time() + REPORT_TIMEOUT
    while not data.endswith(b"\n"):
        try:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
            continue
        except BlockingIOError:
            pass
        try:
            await asyncio.wait_for(packets.readable(fd), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return {"error": f"no word from the supervisor within {REPORT_TIMEOUT:.0f}s"}
    try:
        outcome = json.loads(data)
        if isinstance(outcome, dict) and (isinstance(outcome.get("pid"), int) or "error" in outcome):
            return outcome
    except ValueError:
        pass
    return {"error": "the supervisor exited without a word"}
