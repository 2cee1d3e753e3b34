"""Finding, from the host, the processes of the kernel zygote: the zygotes themselves, and for a
sandbox its forked kernel (in the sandbox's pid namespace) and that kernel's supervisor (outside
it, creating children into it)."""

from __future__ import annotations

import os

from kernel_gateway_ext.providers.kernel_channel import _first_child


def namespace(pid: int, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def memory(pid: int) -> dict[str, int]:
    """smaps_rollup in KiB: Rss, Pss, Shared_Clean, Private_Dirty..."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f if "kB" in line}


def alive(pid: int) -> bool:
    try:
        return status(pid)["State"][0] != "Z"
    except (OSError, KeyError):
        return False


def zygotes(gateway) -> list[int]:
    """The zygote processes (bubblewrap's children) of a gateway's provider."""
    found = []
    for zygote in gateway.provider.zygotes._zygotes.values():
        if zygote.state == "ready":
            child = _first_child(zygote._proc.pid)
            if child:
                found.append(child)
    return found


def forked(sandbox: dict) -> tuple[int | None, int | None]:
    """(kernel, supervisor) host pids of a sandbox whose kernel came from a zygote."""
    inside = namespace(sandbox["handle"]["init"], "pid")
    kernel = supervisor = None
    for name in os.listdir("/proc"):
        if not name.isdigit() or b"kernel_zygote" not in cmdline(int(name)):
            continue
        pid = int(name)
        if namespace(pid, "pid") == inside:
            kernel = pid
        elif namespace(pid, "pid_for_children") == inside:
            supervisor = pid
    return kernel, supervisor
