"""The kernel: the grandchild, born inside the sandbox's pid namespace, already the sandbox's
user (see enter.py). It makes itself look, from the inside, like the kernel PicoD would have
spawned (`python -m ipykernel_launcher ...` with PicoD's environment, from the workspace), then
runs ipykernel's app.

What it cannot make the same, and why that is acceptable, is in the gateway's zygote.py
(address layout and hash seed shared by the kernels of one zygote).
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys
from collections.abc import Callable

from . import linux
from .request import Request

MAX_FD = 65536


def become_kernel(request: Request, pid_pipe: int, launcher: str) -> Callable[[], object]:
    """Prepare this process; returns what runs the kernel (in the caller's frame, so that the
    zygote's own frames are gone from the stack when user code runs)."""
    os.setsid()  # its own process group: PicoD interrupts the group, as with a spawned kernel
    # Dies with the supervisor, which dies with the sandbox; and, like any process that exec'd,
    # may be traced and dumped by its own user (changing uids in the parent cleared that).
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    linux.prctl(linux.PR_SET_DUMPABLE, 1)
    os.write(pid_pipe, f"{os.getpid()}\n".encode())  # as seen inside the sandbox
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(request.fds["log"], 1)
    os.dup2(request.fds["log"], 2)
    # Every other descriptor goes: the zygote holds none of its own by then (its socket was
    # closed by its Python object), and nothing of the gateway or the supervisor may stay.
    os.closerange(3, MAX_FD)
    os.environ.clear()
    os.environ.update(request.env)
    _as_if_launched()
    _reseed()
    sys.argv = [launcher, *request.argv]
    argv = list(request.argv)

    def run() -> object:
        from ipykernel.kernelapp import IPKernelApp
        return IPKernelApp.launch_instance(argv=argv)
    return run


def _as_if_launched() -> None:
    """sys.path as ipykernel_launcher leaves it: without the script's entry (the zygote's `-c`
    put ''; IPython puts it back when the shell starts). PYTHONPATH's entries are already in
    place: the zygote had the same environment."""
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    sys.path_importer_cache.pop("", None)
    importlib.invalidate_caches()


def _reseed() -> None:
    """No two kernels may share random state: `random` (fork reseeds it too, say it anyway) and
    numpy's global generator, if imported, from fresh OS entropy. Hash randomization stays the
    zygote's (it is fixed at interpreter start)."""
    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
