"""The bubblewrap command line for one local sandbox.

New user, pid, ipc, uts, cgroup and network namespaces (the network stays only if the template
allows it), a read-only system, size-capped in-memory /tmp, /dev/shm and workspace, and only
what PicoD and the kernel need bound in: the sandbox Python (read-only), PicoD's package
(read-only) and a run directory, writable by PicoD alone, holding PicoD's Unix socket.
"""

from __future__ import annotations

import os
import shutil

from ..templates import Limits, Preload, Template
from . import userns

WORKSPACE = "/workspace"
# Where `pip install` and `%pip install` put packages (on sys.path of the kernel and commands).
PACKAGES = f"{WORKSPACE}/.packages"
RUN_DIR = "/run/kernelcube"
PICOD_SOURCE = "/opt/kernelcube"
SOCKET_NAME = "picod.sock"
# What PicoD keeps: switch to the user's ids for the code it runs, and signal that code.
DAEMON_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")
RLIMIT_FLAGS = {"nofile": "--nofile", "nproc": "--nproc", "as": "--as", "cpu": "--cpu",
                "fsize": "--fsize", "core": "--core", "memlock": "--memlock"}


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def prlimit_argv(rlimits: dict) -> list[str]:
    """`prlimit --nofile=N:N ... --` so every process of the sandbox inherits the limits."""
    prlimit = shutil.which("prlimit")
    if not rlimits or prlimit is None:
        return []
    return [prlimit, *(f"{RLIMIT_FLAGS[name]}={value}:{value}" for name, value in sorted(rlimits.items())), "--"]


def bwrap_argv(bwrap: str, template: Template, python_roots: list[str], picod_package: str,
               run_dir: str, namespaces: tuple[int, int] | None, die_with_parent: bool,
               daemon: bool = True, shared_caches: list[tuple[str, str]] = ()) -> list[str]:
    """The sandbox: PicoD runs as DAEMON_UID with only the capabilities it needs to start and
    stop user code as USER_UID (in the sandbox's own user namespace, so they reach nothing
    outside it); the workspace, /tmp and /dev/shm are size-capped in-memory filesystems, all
    mounted nosuid and nodev; /proc/sys and the other host-global /proc entries are read-only
    (bubblewrap's --proc). `namespaces` are descriptors of the setup and the sandbox's user
    namespaces (see userns.py), or None when the gateway cannot map ids. With `daemon` False (an agent runtime: the user's own command is the
    sandbox's process) everything runs as USER_UID without capabilities. `shared_caches` are
    (host path, path under /tmp) pairs bound read-only (see caches.py) into directories of the
    sandbox's own."""
    limits = template.limits
    argv = [bwrap]
    if namespaces is not None:
        uid = userns.DAEMON_UID if daemon else userns.USER_UID
        argv += ["--userns", str(namespaces[0]), "--userns2", str(namespaces[1]),
                 "--uid", str(uid), "--gid", str(userns.SANDBOX_GID)]
    else:  # not root: bubblewrap maps our own id, nothing else
        argv += ["--unshare-user", "--disable-userns"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--new-session"]
    if not template.network:
        argv.append("--unshare-net")
    if die_with_parent:
        argv.append("--die-with-parent")
    argv += ["--cap-drop", "ALL"]
    if namespaces is not None and daemon:
        for cap in DAEMON_CAPS:
            argv += ["--cap-add", cap]
    argv += filesystem_argv(limits, python_roots, shared_caches, [(picod_package, f"{PICOD_SOURCE}/picod_kernel")],
                            [(run_dir, RUN_DIR)])
    argv += ["--chdir", WORKSPACE, "--setenv", "HOME", WORKSPACE, "--unsetenv", "JPY_PARENT_PID"]
    return argv


def filesystem_argv(limits, python_roots: list[str], shared_caches: list[tuple[str, str]],
                    code: list[tuple[str, str]], writable: list[tuple[str, str]] = ()) -> list[str]:
    """A sandbox's file system: the system read-only, in-memory /tmp, /dev/shm and workspace,
    the shared caches, the Python roots and `code` (host, sandbox) directories read-only, and
    `writable` (host, sandbox) directories bound read-write."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink(f"/{name}"):
            argv += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    argv += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(limits.shm), "--tmpfs", "/dev/shm",
             # setgid and group-writable: PicoD's uploads and user code's files share a group.
             "--perms", "2770", "--size", str(limits.disk), "--tmpfs", WORKSPACE,
             "--perms", "2770", "--dir", PACKAGES]
    for parent in sorted({os.path.dirname(dest) for _, dest in shared_caches}):
        argv += ["--perms", "1777", "--dir", parent]
    for source, dest in shared_caches:
        argv += ["--ro-bind", source, dest]
    # Directories above the binds, readable by user code too (bubblewrap would copy the host's
    # modes, and a home directory is 0700).
    for parent in _ancestors([*python_roots, *(dest for _, dest in [*code, *writable])]):
        argv += ["--perms", "0755", "--dir", parent]
    for root in python_roots:
        argv += ["--ro-bind", root, root]
    for source, dest in code:
        argv += ["--ro-bind", source, dest]
    for source, dest in writable:
        argv += ["--bind", source, dest]
    return argv


def zygote_argv(bwrap: str, python_roots: list[str], zygote_package: str, zygote_source: str,
                shared_caches: list[tuple[str, str]]) -> list[str]:
    """bubblewrap for a kernel zygote (see zygote.py): host root with only the capabilities
    that entering a sandbox's namespaces takes, in the host's pid namespace (only pid
    namespaces below one's own can be entered), without network, and with a file system laid
    out like a sandbox's (its own empty workspace and /tmp), so that whatever a library notes at
    import time (its configuration and cache directories, sys.path) holds inside the sandboxes."""
    return [bwrap, "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SYS_CHROOT",
            *filesystem_argv(Limits(), python_roots, shared_caches, [(zygote_package, zygote_source)]),
            "--chdir", WORKSPACE, "--setenv", "HOME", WORKSPACE, "--unsetenv", "JPY_PARENT_PID"]


def with_lifeline(fd: int | None, argv: list[str]) -> list[str]:
    """Run argv (an agent: no PicoD to watch the lifeline) so that it is killed when the
    lifeline's other end closes, and the sandbox ends when it exits."""
    if fd is None:
        return argv
    script = f'"$@" & agent=$!; {{ read -r _ <&{fd}; kill -KILL $agent; }} & wait $agent'
    return ["/bin/sh", "-c", script, "kernelcube-agent", *argv]


def _ancestors(paths: list[str]) -> list[str]:
    """Every proper ancestor of the paths except /, parents first."""
    found: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path.rstrip("/"))
        while parent not in ("/", ""):
            found.add(parent)
            parent = os.path.dirname(parent)
    return sorted(found, key=lambda p: (p.count("/"), p))


def picod_bootstrap(python: str, socket_path: str, workspace: str, source_dir: str,
                    run_as: str | None = None, lifeline_fd: int | None = None,
                    preload: Preload | None = None, kernel_channel_fd: int | None = None) -> list[str]:
    """Run PicoD from its source directory without installing it into the sandbox Python."""
    code = f"import sys; sys.path.insert(0, {source_dir!r}); from picod_kernel.daemon import main; sys.exit(main())"
    # -I: the workspace (PicoD's working directory, writable by user code) must never be on
    # PicoD's sys.path, nor PYTHONPATH (user packages): a module planted there would run as PicoD.
    argv = [python, "-I", "-c", code, "--unix-socket", socket_path, "--workspace", workspace, "--log-level", "WARNING"]
    if run_as:
        argv += ["--run-as", run_as]
    if lifeline_fd is not None:
        argv += ["--exit-with-fd", str(lifeline_fd)]
    if preload and preload.modules:
        argv += ["--preload", ",".join(preload.modules)]
    if preload and preload.code:
        argv += ["--preload-code", preload.code]
    if kernel_channel_fd is not None:
        argv += ["--kernel-channel-fd", str(kernel_channel_fd)]
    return argv
