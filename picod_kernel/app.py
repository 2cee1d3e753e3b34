"""`picod`: the command line, the routes and the process lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field

from . import __version__
from .auth import TokenVerifier, load_public_key
from .channels import Channels
from .command_handlers import execute, health
from .execute import child_environment
from .execution import DEFAULT_MAX_OUTPUT
from .files import DOWNLOAD_PREFIX, download, list_files, upload
from .identity import RunAs, become_daemon_for
from .jail import Workspace
from .kernel import KernelBridge
from .kernel_handlers import interrupt, restart, run, set_env
from .outbox import ChannelLimits
from .relay import Relays
from .server import HttpServer, Route
from .spawner import Spawner

log = logging.getLogger("picod")

SHUTDOWN_GRACE = 10.0
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclass
class State:
    """What every handler needs: passed in explicitly, never a module global."""

    workspace: Workspace
    verifier: TokenVerifier
    kernel: KernelBridge | None
    max_output: int
    started: float
    run_as: RunAs | None = None
    channel_limits: ChannelLimits = field(default_factory=ChannelLimits)
    # What every command's environment starts from: the daemon's, without its private variables
    # (taken once; nothing in the daemon changes its environment).
    command_env: dict[str, str] = field(default_factory=lambda: child_environment(None))
    # Threads that start commands while others run (None: every command starts on the loop).
    spawner: Spawner | None = None


def make_server(state: State) -> HttpServer:
    routes = {
        "/health": Route({"GET": health}, auth=False),
        "/api/execute": Route({"POST": execute}, cancel_on_disconnect=True),
        "/api/files": Route({"POST": upload, "GET": list_files}),
        "/api/run": Route({"POST": run}),
        "/api/kernel/env": Route({"POST": set_env}),
        "/api/kernel/interrupt": Route({"POST": interrupt}),
        "/api/kernel/restart": Route({"POST": restart}),
        "/api/kernel/channels": Route({"GET": Channels(Relays(state.kernel, state.channel_limits))}),
    }
    return HttpServer(routes, state, prefix_routes={DOWNLOAD_PREFIX: Route({"GET": download})})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picod",
        description="PicoD: the KernelCube sandbox daemon. Runs commands, moves files inside a "
                    "workspace jail and bridges a live Jupyter kernel, behind RS256 JWT auth. "
                    "The router's public key (PEM) is read from PICOD_AUTH_PUBLIC_KEY.",
        epilog="Environment: PICOD_AUTH_PUBLIC_KEY (required), PICOD_SANDBOX_ID (tokens must carry "
               "this 'sandbox' claim), PICOD_AUTH_ISSUER (tokens must carry this 'iss'), "
               "PICOD_KERNEL_PYTHON (interpreter for the kernel). None of them reach user code.")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--unix-socket", default="",
                        help="serve on this Unix socket instead of TCP (for sandboxes without a network)")
    parser.add_argument("--workspace", default="",
                        help="directory that file paths and working_dir are jailed to (default: cwd)")
    parser.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT,
                        help="bytes of stdout and of stderr kept per command or execution; beyond it output is "
                             f"dropped and a marker added (default {DEFAULT_MAX_OUTPUT})")
    limits = ChannelLimits()
    parser.add_argument("--channels-replay-bytes", type=int, default=limits.replay_bytes,
                        help="bytes of kernel messages kept for a channels client that named its session "
                             "and went away, replayed when it reconnects; beyond it the oldest are dropped "
                             f"and a marker says how many (default {limits.replay_bytes})")
    parser.add_argument("--channels-replay-messages", type=int, default=limits.replay_messages,
                        help=f"most kernel messages kept for such a client (default {limits.replay_messages})")
    parser.add_argument("--channels-soft-bytes", type=int, default=limits.soft_bytes,
                        help="bytes written to a channels client but not yet sent on, above which its "
                             f"output messages are dropped and a marker says how many (default {limits.soft_bytes})")
    parser.add_argument("--channels-hard-bytes", type=int, default=limits.hard_bytes,
                        help=f"such bytes above which the connection is closed (default {limits.hard_bytes})")
    parser.add_argument("--kernel-python", default=os.environ.get("PICOD_KERNEL_PYTHON") or sys.executable,
                        help="Python interpreter with ipykernel that runs the kernel (default: this one)")
    parser.add_argument("--no-kernel", action="store_true", help="run without a kernel bridge")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE",
                        help="import this module in the kernel before reporting ready (repeatable, or "
                             "comma-separated); one that fails is reported in /health and skipped")
    parser.add_argument("--preload-code", default="", metavar="CODE",
                        help="run this (IPython) code in the kernel, after the preloaded imports and before "
                             "reporting ready, silently and in the user's namespace")
    parser.add_argument("--run-as", default="", metavar="UID:GID",
                        help="run commands and the kernel as this user (not PicoD's own uid), so user "
                             "code cannot signal or trace the daemon; needs CAP_SETUID, CAP_SETGID and "
                             "CAP_KILL")
    parser.add_argument("--exit-with-fd", type=int, default=None, metavar="FD",
                        help="an inherited pipe's read end: exit when its other end closes (the "
                             "starting process died), taking the kernel and user code along")
    parser.add_argument("--kernel-channel-fd", type=int, default=None, metavar="FD",
                        help="an inherited socket to the gateway that forks kernels from its zygote (a process "
                             "that imported ipykernel and the preload once); without it, or when it gives no "
                             "kernel, the kernel is spawned")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--version", action="version", version=f"picod {__version__}")
    return parser


def make_state(args: argparse.Namespace, env: dict[str, str]) -> State:
    """Build the state from arguments and environment; raise ValueError on bad configuration."""
    key = load_public_key(env.get("PICOD_AUTH_PUBLIC_KEY", ""))
    verifier = TokenVerifier(key, env.get("PICOD_SANDBOX_ID"), env.get("PICOD_AUTH_ISSUER"))
    workspace = Workspace(os.path.abspath(args.workspace or os.getcwd()), shared_group=bool(args.run_as))
    if args.max_output <= 0:
        raise ValueError("--max-output must be a positive number of bytes")
    channel_limits = ChannelLimits(args.channels_replay_bytes, args.channels_replay_messages,
                                   args.channels_soft_bytes, args.channels_hard_bytes).check()
    run_as = RunAs.parse(args.run_as) if args.run_as else None
    if run_as:
        become_daemon_for(run_as)
    preload = tuple(m.strip() for item in args.preload for m in item.split(",") if m.strip())
    kernel = None if args.no_kernel else KernelBridge(workspace.root, args.kernel_python, run_as=run_as,
                                                      max_output=args.max_output, preload_modules=preload,
                                                      preload_code=args.preload_code,
                                                      kernel_channel=args.kernel_channel_fd)
    return State(workspace, verifier, kernel, args.max_output, time.monotonic(), run_as, channel_limits,
                 child_environment(None, env), Spawner())


async def serve(args: argparse.Namespace, state: State) -> None:
    server = make_server(state)
    if args.unix_socket:
        where = await server.listen_unix(args.unix_socket)
    else:
        where = await server.listen_tcp(args.host, args.port)
    log.info("PicoD %s listening on %s, workspace %s", __version__, where, state.workspace.root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with_fd is not None:
        _watch_lifeline(loop, args.exit_with_fd, stop)
    kernel_start = asyncio.ensure_future(state.kernel.start()) if state.kernel else None
    await stop.wait()
    log.info("shutting down")
    server.stop_listening()
    if kernel_start:
        kernel_start.cancel()
        await state.kernel.shutdown()
    if state.spawner:
        state.spawner.stop()
    if not await server.close_connections(SHUTDOWN_GRACE):
        log.warning("requests still running after %.0fs; closing anyway", SHUTDOWN_GRACE)


def _watch_lifeline(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """Stop when the other end of `fd` closes: the process that started us is gone (even if it
    was SIGKILLed), and we must not outlive it."""
    def readable() -> None:
        try:
            if os.read(fd, 512):
                return  # not a close; nothing is ever sent, but ignore it
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        log.warning("the process that started PicoD is gone; shutting down")
        stop.set()
    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


def _return_large_buffers() -> None:
    """Allocations of 1 MiB and more (an upload's body) straight from the OS and back to it when
    freed. By default glibc raises its mmap threshold to the size of the first large block freed,
    after which a 30 MiB upload stays in the daemon's heap, resident, for the rest of its life."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its own policy stands


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _return_large_buffers()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except (ValueError, OSError) as exc:
        print(f"picod: {exc}", file=sys.stderr)
        return 2
    return 0


async def _run(args: argparse.Namespace) -> None:
    # Children are watched through pidfds, not a thread each: under a process limit (a fork bomb
    # in the sandbox) a thread may not start, and a command must then fail cleanly, not the daemon.
    if hasattr(asyncio, "PidfdChildWatcher"):
        with warnings.catch_warnings():  # the child-watcher API is deprecated from Python 3.12 on
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)
    # The state is built inside the loop: the kernel manager's ZMQ context belongs to it.
    await serve(args, make_state(args, dict(os.environ)))


if __name__ == "__main__":
    sys.exit(main())
