"""The bubblewrap command line for one local sandbox.

New user, pid, ipc, uts, cgroup and network namespaces (the network stays only if the template
allows it), a read-only system, a private /tmp, no capabilities, and only what PicoD and the
kernel need bound in: the sandbox Python (read-only), PicoD's package (read-only), the workspace
and a run directory holding PicoD's Unix socket.
"""

from __future__ import annotations

import os
import shutil

from ..templates import Template

WORKSPACE = "/workspace"
RUN_DIR = "/run/kernelcube"
PICOD_SOURCE = "/opt/kernelcube"
SOCKET_NAME = "picod.sock"
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
               workspace: str, run_dir: str) -> list[str]:
    argv = [bwrap, "--unshare-all", "--new-session", "--cap-drop", "ALL"]
    if template.network:
        argv.append("--share-net")
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink(f"/{name}"):
            argv += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    argv += ["--ro-bind", "/etc", "/etc", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    for root in python_roots:
        argv += ["--ro-bind", root, root]
    argv += ["--ro-bind", picod_package, f"{PICOD_SOURCE}/picod_kernel",
             "--bind", workspace, WORKSPACE, "--bind", run_dir, RUN_DIR,
             "--chdir", WORKSPACE, "--setenv", "HOME", WORKSPACE, "--unsetenv", "JPY_PARENT_PID"]
    return argv


def picod_bootstrap(python: str, socket_path: str, workspace: str, source_dir: str) -> list[str]:
    """Run PicoD from its source directory without installing it into the sandbox Python."""
    code = f"import sys; sys.path.insert(0, {source_dir!r}); from picod_kernel.app import main; sys.exit(main())"
    return [python, "-c", code, "--unix-socket", socket_path, "--workspace", workspace, "--log-level", "WARNING"]
