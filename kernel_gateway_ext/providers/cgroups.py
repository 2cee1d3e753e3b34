"""Per-sandbox resource limits with control groups: memory, processes and CPU.

Each sandbox gets a cgroup of its own under the gateway's cgroup (so a gateway that is itself
limited, in a container for example, never hands out more than it has). Both hierarchies are
supported: cgroup v2 (`memory.max`, `pids.max`, `cpu.max`) and the v1 `memory`, `pids` and
`cpu` controllers (`memory.limit_in_bytes`, `pids.max`, `cpu.cfs_quota_us`). Where neither is
writable, `detect()` answers None and the provider falls back to rlimits, saying so at start.

The sandbox's first process joins its cgroups before it execs anything (see `join_argv`), so
every process of the sandbox, however it forks, is counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass

log = logging.getLogger("kernelcube.cgroups")

ROOT = "/sys/fs/cgroup"
CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu")
# `sh -c` prelude: write our own pid into each cgroup.procs given before `--`, then exec the rest.
JOIN_SCRIPT = ('for f; do shift; [ "$f" = -- ] && break; '
               'echo $$ > "$f" || { echo "kernelcube: cannot join cgroup $f" >&2; exit 125; }; done; exec "$@"')


@dataclass(frozen=True)
class Limits:
    memory: int  # bytes, for everything the sandbox holds in RAM (its in-memory files included)
    processes: int  # tasks (processes and threads)
    cpus: float  # CPU time as a number of cores; 0 = no cap


class Cgroups:
    """Creates, fills and removes sandbox cgroups in one hierarchy layout."""

    def __init__(self, version: int, parents: dict[str, str]):
        self.version = version
        self.parents = parents  # controller (v1) or "unified" (v2) -> parent directory

    def paths(self, sandbox_id: str) -> list[str]:
        return [os.path.join(parent, sandbox_id) for parent in self.parents.values()]

    def _ensure_parents(self) -> None:
        """The gateway's own groups exist only while it has sandboxes (see `close`)."""
        for parent in self.parents.values():
            os.makedirs(parent, exist_ok=True)
        if self.version == 2:
            # A v2 group may hand controllers to its children only if it holds no processes
            # itself; ours never does.
            _write(self.parents["unified"], "cgroup.subtree_control", "+memory +pids +cpu")

    def create(self, sandbox_id: str, limits: Limits) -> list[str]:
        """Make the sandbox's cgroups with their limits; returns the cgroup.procs files to join."""
        self._ensure_parents()
        try:
            if self.version == 2:
                path = os.path.join(self.parents["unified"], sandbox_id)
                os.mkdir(path)
                _write(path, "memory.max", limits.memory)
                _write(path, "memory.swap.max", 0, optional=True)
                _write(path, "pids.max", limits.processes)
                if limits.cpus > 0:
                    _write(path, "cpu.max", f"{int(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            else:
                memory, pids, cpu = (os.path.join(self.parents[c], sandbox_id) for c in V1_CONTROLLERS)
                for path in (memory, pids, cpu):
                    os.mkdir(path)
                _write(memory, "memory.limit_in_bytes", limits.memory)
                _write(memory, "memory.memsw.limit_in_bytes", limits.memory, optional=True)
                _write(pids, "pids.max", limits.processes)
                if limits.cpus > 0:
                    _write(cpu, "cpu.cfs_period_us", CFS_PERIOD_US)
                    _write(cpu, "cpu.cfs_quota_us", int(limits.cpus * CFS_PERIOD_US))
        except OSError:
            self.remove(sandbox_id)
            raise
        return [os.path.join(path, "cgroup.procs") for path in self.paths(sandbox_id)]

    def kill(self, sandbox_id: str) -> None:
        """SIGKILL every process in the sandbox's cgroups: whatever user code forked, detached or
        hid, it cannot leave its cgroup (the sandbox does not even see the cgroup files)."""
        for _ in range(10):  # a process forking while we read is caught on the next round
            pids = set()
            for path in self.paths(sandbox_id):
                with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
                    pids.update(int(pid) for pid in f.read().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def discard(self, sandbox_id: str) -> None:
        """Kill what runs in the sandbox's cgroups, then remove them."""
        self.kill(sandbox_id)
        self.remove(sandbox_id)

    def close(self) -> None:
        """Remove the gateway's parent cgroups once no sandbox cgroup is left in them."""
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def remove(self, sandbox_id: str, timeout: float = 2.0) -> None:
        """rmdir the sandbox's cgroups once their killed processes have left them."""
        deadline = time.monotonic() + timeout
        for path in self.paths(sandbox_id):
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("cgroup %s still busy; left for the next sweep", path)
                        break
                    time.sleep(0.02)

    def leftovers(self) -> set[str]:
        """Sandbox ids that still have a cgroup (for the sweep after a restart)."""
        found: set[str] = set()
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                found.update(name for name in os.listdir(parent) if name.startswith("sb-"))
        return found


def detect(group_name: str) -> Cgroups | None:
    """The writable cgroup layout under this process's own cgroups, or None."""
    own = _own_cgroups()
    try:
        if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
            cgroups = _prepare_v2(os.path.join(ROOT, own.get("", "/").lstrip("/")), group_name)
        else:
            parents = {}
            for controller in V1_CONTROLLERS:
                base = os.path.join(ROOT, controller, own.get(controller, "/").lstrip("/"))
                parents[controller] = _make_parent(base, group_name)
            cgroups = Cgroups(1, parents)
        cgroups.close()  # proven writable; made again with the first sandbox
        return cgroups
    except OSError as exc:
        log.debug("no writable cgroups: %s", exc)
        return None


def _prepare_v2(base: str, group_name: str) -> Cgroups:
    with open(os.path.join(base, "cgroup.controllers")) as f:
        available = set(f.read().split())
    missing = {"memory", "pids", "cpu"} - available
    if missing:
        raise OSError(f"cgroup v2 controllers {sorted(missing)} are not available in {base}")
    cgroups = Cgroups(2, {"unified": _make_parent(base, group_name)})
    cgroups._ensure_parents()
    return cgroups


def _make_parent(base: str, group_name: str) -> str:
    parent = os.path.join(base, group_name)
    os.makedirs(parent, exist_ok=True)
    if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
        raise OSError(f"{parent} is not writable")
    return parent


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" is the v2 unified hierarchy)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                found[controller] = path
    return found


def _write(directory: str, name: str, value, optional: bool = False) -> None:
    try:
        with open(os.path.join(directory, name), "w") as f:
            f.write(str(value))
    except OSError:
        if not optional:
            raise


def join_argv(procs_files: list[str]) -> list[str]:
    """A prefix that puts the command into the given cgroups before it execs."""
    if not procs_files:
        return []
    return ["/bin/sh", "-c", JOIN_SCRIPT, "kernelcube-join", *procs_files, "--"]
