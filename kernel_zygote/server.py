"""The zygote process: import once, then fork kernels into sandboxes on the gateway's request.

Started by the gateway (`python -c <bootstrap> --channel-fd N --preload a,b`) with the sandbox
Python, as host root but with only CAP_SYS_ADMIN and CAP_SYS_CHROOT (what entering another
process's namespaces takes), in a mount namespace laid out like a sandbox's (so that every path
a library remembers at import time is right inside the sandboxes too), in the host's pid
namespace (a process can only enter pid namespaces below its own), reachable only through the
socket the gateway passed it: nothing in any sandbox has a path or a descriptor to it.

It stays single-threaded (the gateway pins BLAS and OpenMP pools to one thread; no ZMQ context
is made before a fork), holds no descriptor but its socket, and says so in its ready message;
the gateway refuses a zygote that does not.

Protocol, SOCK_SEQPACKET, one JSON object per message:
  zygote -> gateway, once: {"ready": {"preload": {module: "ok" | error}, "threads": n, "fds": [...]}}
  gateway -> zygote: {"fork": {...}} with descriptors attached (see request.py)
  zygote -> gateway: {"forked": pid} or {"error": why}
The forked child (the supervisor) enters the sandbox, forks the kernel (the pid namespace
applies to children only), writes the kernel's pid, as the sandbox sees it, to its `report`
descriptor (or {"error": why}), then waits for the kernel and writes {"exit": code} to its
`status` descriptor, which PicoD reads. When PicoD closes that pipe (it died, or gave up
waiting), the supervisor kills the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys

from .enter import enter_sandbox
from .kernel import become_kernel
from .request import Request, parse

MAX_MESSAGE = 256 * 1024
MAX_FDS = 32
REAP_INTERVAL = 1.0
PID_TIMEOUT = 30.0
# The kernel's app: without it the zygote cannot serve (and says so).
KERNEL_APP = ("ipykernel.kernelapp", "ipykernel_launcher")
# What every kernel imports while it starts (its shell, magics and debugger), beyond the
# preload: imported here, their objects are shared instead of built again in each kernel. Only
# modules whose import has no effect beyond defining things (not matplotlib_inline's backend,
# which hooks into the shell it finds at import time); each one that is missing (another
# ipykernel or IPython version) is simply left to the kernel.
KERNEL_MACHINERY = ("ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger", "IPython.core.debugger",
                    "IPython.core.completerlib", "IPython.core.magics", "IPython.core.oinspect",
                    "IPython.core.pylabtools", "IPython.extensions.storemagic", "tornado.platform.asyncio",
                    "sqlite3", "faulthandler")
# What drawing a first figure inline imports, when matplotlib is preloaded.
PLOTTING = ("matplotlib.backends.backend_agg", "PIL.PngImagePlugin", "PIL.JpegImagePlugin",
            "PIL.GifImagePlugin", "PIL.BmpImagePlugin", "PIL.PpmImagePlugin")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel-zygote")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--preload", default="")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    channel = socket.socket(fileno=args.channel_fd)
    before = dict(os.environ)
    launcher, report = _import_everything([m for m in args.preload.split(",") if m])
    # What the imports themselves put in the environment (ipykernel's debugger does): a kernel
    # that imported them would have it too.
    imported_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
    # Objects that exist now are shared by every kernel: keep the collector from writing to
    # them (its bookkeeping would copy their pages into each kernel).
    gc.collect()
    gc.freeze()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_capability = int(f.read())
    threads, fds = _threads(), _open_descriptors({0, 1, 2, channel.fileno()})
    _send(channel, {"ready": {"preload": report, "threads": threads, "fds": fds}})
    if threads != 1 or fds:
        return 1
    request = _serve(channel)  # returns only in a forked child
    request.env.update(imported_env)
    run = _supervise(request, last_capability, launcher)  # returns only in the kernel
    del channel, request, report
    return run()


def _import_everything(preload: list[str]) -> tuple[str, dict[str, str]]:
    """ipykernel's app (a failure there ends the zygote) and machinery, then the preload, each
    module on its own: one that fails is reported, and every kernel will try it again (and
    report it) itself, as without a zygote."""
    for name in KERNEL_APP:
        module = importlib.import_module(name)
    launcher = module.__file__
    for name in KERNEL_MACHINERY:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    report = {}
    for name in preload:
        try:
            importlib.import_module(name)
            report[name] = "ok"
        except BaseException as exc:  # an import may raise anything, SystemExit included
            report[name] = f"{type(exc).__name__}: {exc}"
    if report.get("matplotlib.pyplot") == "ok" or report.get("matplotlib") == "ok":
        for name in PLOTTING:
            with contextlib.suppress(Exception):  # only a head start: a kernel imports what it needs
                importlib.import_module(name)
        with contextlib.suppress(Exception):
            _draw_once()
    return launcher, report


def _draw_once() -> None:
    """Draw one figure off screen, so that what matplotlib builds lazily for a first figure
    (font lookups, text and transform caches) is built here, once, and shared. The fonts it
    opened are dropped again: a kernel must not inherit an open file (and would close it)."""
    import io

    from matplotlib import font_manager
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    figure.subplots().plot([1, 2])
    FigureCanvasAgg(figure).print_png(io.BytesIO())
    del figure
    if hasattr(font_manager, "_get_font"):  # its cache holds the font files open
        font_manager._get_font.cache_clear()
    gc.collect()


def _serve(channel: socket.socket) -> Request:
    """Answer fork requests until the gateway closes the channel (then exit)."""
    channel.settimeout(REAP_INTERVAL)
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE, MAX_FDS)
        except TimeoutError:
            _reap()
            continue
        if not data:
            sys.exit(0)  # the gateway is gone
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    os.close(fd)
                raise ValueError("fork request too large")
            request = parse(data, fds)
        except ValueError as exc:
            _send(channel, {"error": str(exc)})
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            request.close()
            _send(channel, {"error": f"fork: {exc}"})
            continue
        if pid == 0:
            channel.close()
            return request
        request.close()
        _send(channel, {"forked": pid})
        _reap()


def _supervise(request: Request, last_capability: int, launcher: str):
    """In the supervisor: enter the sandbox, fork the kernel, report, wait, report its exit.
    Never returns, except in the kernel (with what runs it)."""
    report = request.fds.pop("report")
    # Its own output (a traceback, should it ever fail) goes to the sandbox's log, like PicoD's:
    # nothing of the zygote's stays with a process that enters a sandbox.
    os.dup2(request.fds["log"], 1)
    os.dup2(request.fds["log"], 2)
    try:
        enter_sandbox(request, last_capability)
        pid_read, pid_write = os.pipe()
        pid = os.fork()
    except BaseException as exc:
        _write_line(report, {"error": _describe(exc)})
        os._exit(1)
    if pid == 0:
        try:
            os.close(pid_read)
            os.close(report)
            status = request.fds.pop("status")
            os.close(status)
            return become_kernel(request, pid_write, launcher)
        except BaseException:
            os._exit(1)  # the supervisor reports it: no pid came
    os.close(pid_write)
    os.close(request.fds.pop("log"))
    inner_pid = _read_pid(pid_read)
    os.close(pid_read)
    if inner_pid is None:
        _write_line(report, {"error": "the kernel process failed before it started"})
        os._exit(1)
    _write_line(report, {"pid": inner_pid})
    os.close(report)
    _wait(pid, request.fds.pop("status"))
    os._exit(0)


def _wait(pid: int, status: int) -> None:
    """Until the kernel exits (then write its exit status), or PicoD closes the status pipe
    (then kill the kernel first: nobody would manage it)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(status, 0)  # POLLERR once the reading end is closed
    while True:
        events = dict(poller.poll())
        if pidfd in events:
            break
        if status in events:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            poller.unregister(status)
    _, code = os.waitpid(pid, 0)
    _write_line(status, {"exit": os.waitstatus_to_exitcode(code)})


def _read_pid(fd: int) -> int | None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n") and poller.poll(PID_TIMEOUT * 1000):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    try:
        return int(data)
    except ValueError:
        return None


def _write_line(fd: int, message: dict) -> None:
    try:
        os.write(fd, json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the reader is gone


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"


def _send(channel: socket.socket, message: dict) -> None:
    channel.settimeout(None)
    try:
        channel.send(json.dumps(message).encode())
    finally:
        channel.settimeout(REAP_INTERVAL)


def _reap() -> None:
    """Collect supervisors that ended (each lives as long as its kernel)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _open_descriptors(expected: set[int]) -> list[str]:
    """Descriptors the imports left open: each would be inherited by every kernel."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        if int(name) not in expected:
            found.append(f"{name}: {target}")
    return found
