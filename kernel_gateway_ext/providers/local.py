"""Local sandboxes: one PicoD process per sandbox, under bubblewrap (or bare, when isolation is
explicitly `none`), reached over a Unix socket in the sandbox's run directory.

Sandboxes run in sessions of their own and do not die with the gateway: with a persistent store
a restarted gateway re-adopts the claimed ones, and `sweep` cleans whatever no session holds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from ..picod_client import PicodClient, peer_credentials
from ..templates import Template
from . import bwrap, caches, cgroups, userns
from .base import Sandbox, SandboxProvider, SandboxStartError
from .kernel_channel import KernelChannel, SandboxFacts
from .zygote import BOOTSTRAP, SOURCE_DIR, Zygotes, ZygoteSpec, zygote_environment

log = logging.getLogger("kernelcube.local")

START_TIMEOUT = 60.0
MAX_SOCKET_PATH = 107
POLL_INTERVAL = 0.02


class LocalProvider(SandboxProvider):
    name = "local"

    def __init__(self, state_dir: str, public_pem: str, isolation: str, python: str,
                 die_with_gateway: bool = False, uid_base: int = userns.DEFAULT_BASE, kernel_zygote: bool = False):
        self.root = sandboxes_root(state_dir)
        self.caches = caches.SharedCaches(os.path.join(os.path.abspath(state_dir), "caches"))
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.public_pem = public_pem
        self.isolation = isolation
        self.python = python
        # Located, not imported: the gateway speaks to PicoD only over HTTP.
        self.picod_package = importlib.util.find_spec("picod_kernel").submodule_search_locations[0]
        self.bwrap = bwrap.find_bwrap()
        # With an ephemeral store no session can outlive the gateway, so neither may a sandbox,
        # even when the gateway is SIGKILLed (bubblewrap's --die-with-parent).
        self.die_with_gateway = die_with_gateway
        self.uid_base = uid_base
        self.no_userns = userns.unavailable_reason()  # None, or why ids cannot be mapped to a host range
        self.userns = userns.UserNamespaces(uid_base)
        if self.no_userns is None and isolation != "none":
            self.userns.setup_fd()  # at start, so that a host that cannot do it fails at once
        self.cgroups = cgroups.detect(f"kernelcube-{hashlib.sha256(self.root.encode()).hexdigest()[:12]}")
        # Warm kernels forked from a zygote (see zygote.py), where sandboxes have ids of their own.
        self.zygotes = None
        if kernel_zygote and self.bwrap and isolation != "none" and self.no_userns is None:
            self.zygotes = Zygotes(os.path.join(os.path.abspath(state_dir), "zygotes"))
            self.zygote_package = importlib.util.find_spec("kernel_zygote").submodule_search_locations[0]
        self.no_zygote = None if self.zygotes or not kernel_zygote else (
            self.no_userns or "sandboxes are not isolated with bubblewrap")
        self._channels: dict[str, KernelChannel] = {}  # sandbox id -> its PicoD's way to the zygote
        self._roots: dict[str, list[str]] = {}
        # Plain Popen objects, not asyncio transports: a transport kills its process when it is
        # closed, and claimed sandboxes must outlive this gateway when the store persists.
        self._children: dict[str, tuple[subprocess.Popen, dict]] = {}  # id -> (process, handle)
        self._kept: set[str] = set()
        self._lifelines: dict[str, int] = {}  # sandbox id -> write end of its PicoD's lifeline
        # The last line of defence when the loop stops before shutdown finishes (a second
        # Ctrl-C): every sandbox this gateway started dies with it, unless marked to be kept.
        atexit.register(self._kill_unkept)

    def describe_isolation(self) -> list[str]:
        """What protects the sandboxes here, for the log at start-up; warnings first."""
        notes = []
        if self.isolation != "none" and self.no_userns:
            notes.append(f"WARNING: sandbox ids are not mapped to a host range ({self.no_userns}); "
                         "PicoD and user code share one id")
        if self.cgroups is None:
            notes.append("WARNING: no writable cgroups; sandbox memory and processes are bounded by "
                         "rlimits only (per process, not per sandbox), and CPU is not capped")
        else:
            notes.append(f"sandbox limits by cgroup v{self.cgroups.version}")
        if self.isolation != "none" and not self.no_userns:
            notes.append(f"sandbox ids map to host ids {self.uid_base}..{self.uid_base + userns.RANGE - 1}")
        if self.zygotes is not None:
            notes.append("warm kernels fork from a zygote per sandbox Python and preload")
        elif self.no_zygote:
            notes.append(f"kernels are spawned, not forked from a zygote: {self.no_zygote}")
        return notes

    # -- creation ----------------------------------------------------------------------------

    async def _python_roots(self, python: str) -> list[str]:
        """The directories a sandboxed interpreter needs read-only: its prefix and base prefix."""
        if python not in self._roots:
            # In a thread: a cancelled create must not leave the probe behind half-read.
            probe = [python, "-I", "-c",
                     "import os, sys; print(os.path.realpath(sys.prefix)); print(os.path.realpath(sys.base_prefix))"]
            try:
                result = await asyncio.to_thread(subprocess.run, probe, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxStartError(f"the sandbox Python {python} cannot run: {exc}") from exc
            if result.returncode != 0:
                raise SandboxStartError(f"the sandbox Python {python} is not a working Python interpreter "
                                        f"(exit {result.returncode})")
            out = result.stdout
            prefixes = set(out.decode().split())
            roots = sorted(prefixes | {os.path.dirname(os.path.dirname(python))})
            self._roots[python] = [r for r in roots if not r.startswith("/usr")]
        return self._roots[python]

    def _rlimits(self, template: Template) -> dict:
        rlimits = dict(template.rlimits)
        if self.cgroups is None:  # per-process stand-ins for the per-sandbox limits
            rlimits.setdefault("as", template.limits.memory)
            rlimits.setdefault("nproc", template.limits.processes)
        return rlimits

    def _isolation_argv(self, template: Template, procs: list[str]) -> list[str]:
        """The prefix every sandbox process starts under: its cgroups, then its rlimits."""
        return cgroups.join_argv(procs) + bwrap.prlimit_argv(self._rlimits(template))

    async def _zygote_spec(self, template: Template, python: str) -> ZygoteSpec | None:
        """The zygote this template's kernels fork from, or None when they are spawned."""
        if self.zygotes is None or template.kind != "code-interpreter" or not self.bwrap_used(template):
            return None
        kernel_env = {k: v for k, v in self._environment(template, "", python, bwrap.WORKSPACE).items()
                      if not k.startswith(("PICOD_", "KERNELCUBE_"))}
        env = zygote_environment({**kernel_env, "HOME": bwrap.WORKSPACE})
        if env is None:
            return None
        argv = bwrap.zygote_argv(self.bwrap, await self._python_roots(python), self.zygote_package,
                                 f"{SOURCE_DIR}/kernel_zygote", await self.caches.binds(python))
        argv += [python, "-c", BOOTSTRAP, "--preload", ",".join(template.preload.modules)]
        return ZygoteSpec(python, tuple(template.preload.modules), tuple(sorted(env.items())), tuple(argv))

    async def _picod_argv(self, template: Template, python: str, directory: str,
                          namespaces: tuple[int, int] | None, lifeline: int | None,
                          kernel_channel: int | None = None) -> list[str]:
        run_dir = os.path.join(directory, "run")
        if not self.bwrap_used(template):
            source = os.path.dirname(self.picod_package)
            workspace = os.path.join(directory, "workspace")
            return bwrap.picod_bootstrap(python, os.path.join(run_dir, bwrap.SOCKET_NAME), workspace, source,
                                         lifeline_fd=lifeline, preload=template.preload)
        run_as = None if namespaces is None else f"{userns.USER_UID}:{userns.SANDBOX_GID}"
        inner_socket = f"{bwrap.RUN_DIR}/{bwrap.SOCKET_NAME}"
        return (await self._bwrap_prefix(template, python, run_dir, namespaces)
                + bwrap.picod_bootstrap(python, inner_socket, bwrap.WORKSPACE, bwrap.PICOD_SOURCE, run_as, lifeline,
                                        template.preload, kernel_channel))

    async def _bwrap_prefix(self, template: Template, python: str, run_dir: str,
                            namespaces: tuple[int, int] | None, daemon: bool = True) -> list[str]:
        """bubblewrap's command line up to the command it runs."""
        if self.bwrap is None:
            raise SandboxStartError("bubblewrap (bwrap) is not installed; install it or set isolation to 'none'")
        roots = await self._python_roots(python)
        shared = await self.caches.binds(python)
        return bwrap.bwrap_argv(self.bwrap, template, roots, self.picod_package, run_dir, namespaces,
                                self.die_with_gateway, daemon, shared)

    def bwrap_used(self, template: Template) -> bool:
        return (template.isolation or self.isolation) != "none"

    def _environment(self, template: Template, sandbox_id: str, python: str, workspace: str) -> dict[str, str]:
        path = f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin"
        # Caches and profiles go to the private /tmp, keeping the workspace for the user's files.
        packages = bwrap.PACKAGES if self.bwrap_used(template) else os.path.join(workspace, ".packages")
        return {"PATH": path, "LANG": "C.UTF-8", "IPYTHONDIR": caches.IPYTHON_DIR,
                "MPLCONFIGDIR": caches.MATPLOTLIB_DIR, "PYTHONPATH": packages, "PIP_TARGET": packages,
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", **template.env,
                "PICOD_AUTH_PUBLIC_KEY": self.public_pem, "PICOD_SANDBOX_ID": sandbox_id,
                "PICOD_KERNEL_PYTHON": python}

    async def create(self, template: Template) -> Sandbox:
        sandbox_id = f"sb-{uuid.uuid4().hex[:12]}"
        directory = os.path.join(self.root, sandbox_id)
        python = template.python or self.python
        env = self._environment(template, sandbox_id, python, os.path.join(directory, "workspace"))
        isolated = self.bwrap_used(template)
        mapped = isolated and self.no_userns is None
        # Outside the sandbox the daemon's files and processes belong to this host id.
        daemon_uid = userns.host_id(self.uid_base, userns.DAEMON_UID) if mapped else os.getuid()
        handle = {"dir": directory, "daemon_uid": daemon_uid}
        sandbox: Sandbox | None = None
        namespaces = None  # (setup, sandbox) user namespace descriptors for bubblewrap
        lifeline = None
        inherited: list[int] = []  # descriptors the sandbox keeps (and we close after the spawn)
        channel = None
        try:
            await _finished(_make_dirs, directory, daemon_uid if mapped else None)
            if self.cgroups is not None:
                handle["cgroups"] = True
                procs = await _finished(self.cgroups.create, sandbox_id, template.limits)
            else:
                procs = []
            if mapped:
                inherited.append(await _finished(self.userns.create, undo=os.close))
                namespaces = (self.userns.setup_fd(), inherited[-1])
            if self.die_with_gateway:
                # The sandbox ends when this pipe's write end, held only by this gateway, closes:
                # however the gateway dies, its sandboxes go with it.
                lifeline, self._lifelines[sandbox_id] = os.pipe()
                inherited.append(lifeline)
            log_path = os.path.join(directory, "sandbox.log")
            spec = await self._zygote_spec(template, python) if mapped else None
            if spec is not None:
                self.zygotes.prepare(spec)  # importing while the sandbox starts
                channel = self._channels[sandbox_id] = KernelChannel(self.zygotes, spec, SandboxFacts(
                    os.dup(namespaces[1]), procs, log_path, self._rlimits(template)))
            if template.kind == "agent-runtime":
                command, endpoint = await self._agent_argv(template, python, directory, env, namespaces, lifeline)
            else:
                command = await self._picod_argv(template, python, directory, namespaces, lifeline,
                                                 channel.theirs.fileno() if channel else None)
                endpoint = {"unix_socket": os.path.join(directory, "run", bwrap.SOCKET_NAME)}
            argv = self._isolation_argv(template, procs) + command
            passed = {*(namespaces or ()), *inherited, *([channel.theirs.fileno()] if channel else [])}
            with open(log_path, "wb") as log_file:  # noqa: ASYNC230 -- opening is instant; the child writes
                # Popen forks and returns at exec, as asyncio's own spawn does on the loop.
                proc = subprocess.Popen(  # noqa: ASYNC220
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    start_new_session=True, cwd=directory, pass_fds=tuple(passed))
            handle["pid"] = proc.pid
            if channel is not None:
                channel.attach(proc.pid)  # closes its copy of PicoD's end
            sandbox = Sandbox(sandbox_id, template.name, endpoint, handle)
            self._children[sandbox_id] = (proc, sandbox.handle)
            await _finished(_write_json, os.path.join(directory, "sandbox.json"), sandbox.to_dict())
            await self._wait_ready(sandbox, proc, log_path)
            # Under bubblewrap the sandbox lives as long as its namespace init (bwrap's child),
            # even if bwrap itself is killed: track and kill both.
            children = _descendants(proc.pid)
            sandbox.handle["init"] = children[0] if children and isolated else proc.pid
        except BaseException:
            await self.destroy(sandbox or Sandbox(sandbox_id, template.name, {}, handle))
            raise
        finally:
            for fd in inherited:
                os.close(fd)
        return sandbox

    async def _agent_argv(self, template: Template, python: str, directory: str, env: dict[str, str],
                          namespaces: tuple[int, int] | None, lifeline: int | None) -> tuple[list[str], dict]:
        """An agent runtime runs the template's command with PORT set. It shares the host's
        network, on a free loopback port, since the gateway must reach it over TCP; it runs as
        the sandbox's user, without PicoD and without capabilities."""
        port = _free_loopback_port()
        env["PORT"] = str(port)
        argv = []
        if self.bwrap_used(template):
            shared = dataclasses.replace(template, network=True)
            argv += await self._bwrap_prefix(shared, python, os.path.join(directory, "run"), namespaces,
                                             daemon=False)
        return argv + bwrap.with_lifeline(lifeline, list(template.command)), {"url": f"http://127.0.0.1:{port}"}

    async def _wait_ready(self, sandbox: Sandbox, proc: subprocess.Popen, log_path: str) -> None:
        """Poll until the sandbox answers: PicoD's /health (kernel ready), or an agent's port."""
        client = None if "url" in sandbox.endpoint else PicodClient(sandbox.endpoint)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SandboxStartError(f"sandbox {sandbox.id} exited with {proc.returncode} while starting: "
                                            f"{await _tail(log_path)}")
                if await (_picod_ready(sandbox, client) if client else _listening(sandbox.endpoint["url"])):
                    if client is not None:
                        sandbox.endpoint["peer"] = await _verified_peer(sandbox, proc.pid)
                    return
                await asyncio.sleep(POLL_INTERVAL)
            raise SandboxStartError(f"sandbox {sandbox.id} was not ready within {START_TIMEOUT:.0f}s: "
                                    f"{await _tail(log_path)}")
        finally:
            if client is not None:
                await client.close()

    # -- lifecycle ---------------------------------------------------------------------------

    def keep_on_exit(self, sandbox_id: str) -> None:
        """The sandbox belongs to a session that outlives the gateway (a persistent store)."""
        self._kept.add(sandbox_id)

    def _kill_unkept(self) -> None:
        for sandbox_id, (_, handle) in list(self._children.items()):
            if sandbox_id not in self._kept:
                _kill_sandbox(sandbox_id, handle)
                if self.cgroups is not None and handle.get("cgroups"):
                    self.cgroups.discard(sandbox_id)
                if handle.get("dir"):
                    shutil.rmtree(handle["dir"], ignore_errors=True)
        if self.die_with_gateway and self.cgroups is not None:
            # Sandboxes still being created when we stop (not yet children): nothing of an
            # ephemeral gateway may stay, its cgroups included.
            for sandbox_id in self.cgroups.leftovers():
                self.cgroups.discard(sandbox_id)

    async def destroy(self, sandbox: Sandbox) -> None:
        self._kept.discard(sandbox.id)
        channel = self._channels.pop(sandbox.id, None)
        if channel is not None:
            channel.close()
        lifeline = self._lifelines.pop(sandbox.id, None)
        if lifeline is not None:
            os.close(lifeline)
        child = self._children.pop(sandbox.id, None)
        try:
            _kill_sandbox(sandbox.id, sandbox.handle)
            if child is not None:
                await _reap(child[0])
            if self.cgroups is not None and sandbox.handle.get("cgroups"):
                await asyncio.to_thread(self.cgroups.discard, sandbox.id)
        finally:  # whatever failed above, the directory goes (a sandbox half made, too)
            directory = sandbox.handle.get("dir")
            if directory and os.path.dirname(directory) == self.root:
                await _remove_tree(directory)

    async def is_alive(self, sandbox: Sandbox) -> bool:
        """PicoD itself runs (its namespace's init outlives it for a moment); for an agent
        runtime, the sandbox's init."""
        pid = (sandbox.endpoint.get("peer", {}).get("pid") or sandbox.handle.get("init")
               or sandbox.handle.get("pid"))
        return bool(pid) and _is_ours(pid, sandbox.id)

    async def sweep(self, keep: set[str]) -> int:
        names = await asyncio.to_thread(os.listdir, self.root)
        swept = 0
        for name in names:
            if name in keep or name in self._children:
                continue
            record = await asyncio.to_thread(_read_json, os.path.join(self.root, name, "sandbox.json"))
            sandbox = Sandbox.from_dict(record) if record else Sandbox(name, "", {}, {"dir": os.path.join(self.root, name)})
            await self.destroy(sandbox)
            swept += 1
        if self.cgroups is not None:  # cgroups whose sandbox directory is already gone
            for name in await asyncio.to_thread(self.cgroups.leftovers):
                if name not in keep and name not in self._children:
                    await asyncio.to_thread(self.cgroups.remove, name)
        if swept:
            log.info("swept %d sandbox(es) that no session holds", swept)
        return swept

    async def close(self) -> None:
        """Kill what should not outlive us, forget the rest (claimed, kept on purpose)."""
        self._kill_unkept()
        self._children.clear()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self.zygotes is not None:
            self.zygotes.close()
        self.userns.close()
        if self.cgroups is not None:
            self.cgroups.close()
        atexit.unregister(self._kill_unkept)
        with contextlib.suppress(OSError):
            os.rmdir(self.root)  # only when empty: nothing is left to re-adopt


async def _remove_tree(directory: str, tries: int = 20, pause: float = 0.05) -> None:
    """Remove a sandbox's directory. A sandbox stopped while it was starting may still have a
    process that dies a moment after bubblewrap (PicoD binding its socket in run/), and a file
    made during the removal leaves the directory behind: try again until it is gone."""
    def removed() -> bool:
        shutil.rmtree(directory, ignore_errors=True)
        return not os.path.lexists(directory)

    for _ in range(tries):
        if await asyncio.to_thread(removed):
            return
        await asyncio.sleep(pause)
    log.warning("could not remove %s: something in the sandbox kept writing to it", directory)


async def _finished(fn, *args, undo=None):
    """Run blocking set-up work in a thread. If the caller is cancelled meanwhile (a pool that
    stops), wait for the thread anyway, so that what it made (directories, cgroups) exists
    before the clean-up runs, and `undo` what it returned."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            result = await task
            if undo is not None:
                undo(result)
        raise


async def _reap(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Collect a killed child's exit status without blocking the loop: a pidfd becomes
    readable when the process exits."""
    if proc.poll() is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped elsewhere
        proc.poll()
        return
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, timeout)
    except asyncio.TimeoutError:
        log.warning("sandbox process %d did not exit within %.0fs of SIGKILL", proc.pid, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    proc.poll()


def sandboxes_root(state_dir: str) -> str:
    """Where sandbox directories live: under the state directory, unless that would make the
    path of a sandbox's Unix socket longer than the kernel allows (107 bytes); then under a
    short directory in /tmp derived from the state directory, so a restart finds it again."""
    root = os.path.join(os.path.abspath(state_dir), "sandboxes")
    socket_path = os.path.join(root, "sb-000000000000", "run", bwrap.SOCKET_NAME)
    if len(socket_path.encode()) <= MAX_SOCKET_PATH:
        return root
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:12]
    short = os.path.join(tempfile.gettempdir(), f"kernelcube-{os.getuid()}-{digest}")
    log.info("state directory %s is too deep for Unix socket paths; sandboxes live in %s", state_dir, short)
    return short


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _make_dirs(directory: str, daemon_uid: int | None) -> None:
    """The sandbox's host directory (the gateway's alone), its workspace for unisolated
    sandboxes, and the run directory for PicoD's socket: writable by the daemon's id only, so
    user code can never replace the socket the gateway dials."""
    os.makedirs(directory, mode=0o700)
    os.mkdir(os.path.join(directory, "workspace"), 0o755)
    os.mkdir(os.path.join(directory, "workspace", ".packages"), 0o755)
    run_dir = os.path.join(directory, "run")
    os.mkdir(run_dir, 0o700)
    if daemon_uid is not None:
        os.chown(run_dir, daemon_uid, daemon_uid)


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


async def _tail(path: str, lines: int = 5) -> str:
    def read() -> str:
        try:
            with open(path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:]) or "(no output)"
        except OSError:
            return "(no log)"
    return await asyncio.to_thread(read)


def _is_ours(pid: int, sandbox_id: str) -> bool:
    """The pid still runs this sandbox (not a reused pid): its environment names the sandbox."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"PICOD_SANDBOX_ID={sandbox_id}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every process below pid, parents before children (the threads' children lists)."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            stack += children
    return found


def _kill_sandbox(sandbox_id: str, handle: dict) -> None:
    """Kill bwrap (or the bare daemon) and the namespace init, each only if it still is ours."""
    for key in ("pid", "init"):
        pid = handle.get(key)
        if pid and _is_ours(pid, sandbox_id):
            _kill_tree(pid)


async def _verified_peer(sandbox: Sandbox, pid: int) -> dict:
    """The process serving PicoD's socket, checked once at start: it must run under the
    sandbox we spawned and as the daemon's id. Every later connection must come from it."""
    peer = await peer_credentials(sandbox.endpoint["unix_socket"])
    if peer["uid"] != sandbox.handle["daemon_uid"] or (peer["pid"] != pid and peer["pid"] not in _descendants(pid)):
        raise SandboxStartError(f"sandbox {sandbox.id}: its socket is served by an unexpected process "
                                f"(pid {peer['pid']}, uid {peer['uid']})")
    return {"pid": peer["pid"], "uid": peer["uid"]}


async def _picod_ready(sandbox: Sandbox, client: PicodClient) -> bool:
    status, body = await client.health()  # 0 until the socket exists
    if body.get("kernel") == "failed":
        raise SandboxStartError(f"sandbox {sandbox.id}: the kernel failed to start: {body.get('kernel_error')}")
    if status == 200 and body.get("preload"):
        sandbox.handle["preload"] = body["preload"]
    if status == 200 and body.get("kernel_source"):
        sandbox.handle["kernel_source"] = body["kernel_source"]
    return status == 200


async def _listening(url: str) -> bool:
    """An agent is ready once its port accepts connections."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def _kill_tree(pid: int) -> None:
    """SIGKILL the sandbox's daemon first (so it restarts nothing), then everything below it.
    Under bubblewrap, the namespace's init is among them and its death ends the namespace."""
    targets = _descendants(pid)
    _signal(pid, signal.SIGKILL)
    for target in targets:
        _signal(target, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

