"""User namespaces that map the sandbox's ids to an unprivileged host range.

bubblewrap started by root maps the sandbox's uid 0 to host root. Instead every sandbox lives
in a user namespace of its own whose ids 0..RANGE-1 are host ids BASE..BASE+RANGE-1: none of
them is host root. In it PicoD and user code run as two different ids (`DAEMON_UID`,
`USER_UID`), so user code can neither signal nor trace the daemon, and nested user namespaces
are forbidden (`user.max_user_namespaces` = 0 in it: only a process with capabilities in that
namespace's parent could raise it again, and nothing in the sandbox has any there).

bubblewrap needs to read what it binds in (a Python under a home directory, say) while it
sets the sandbox up, so it does that in a *setup* namespace, shared by the gateway's sandboxes,
that maps the same range plus host root (as an ordinary id, RANGE, so that switching to the
daemon's id keeps bubblewrap's capabilities there), and then moves into the sandbox's own
namespace, a child of the setup one (`--userns` then `--userns2`). Nothing runs in the setup
namespace once the sandbox has started.

Writing a namespace's id maps needs CAP_SETUID over its parent: the gateway, as root, writes
the setup namespace's; `nsenter` into the setup namespace writes each sandbox's. A short-lived
`unshare --user` holder creates each namespace; an open file descriptor keeps it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

# Ids inside every sandbox. PicoD and user code share the group, so files each writes in the
# workspace (group-writable, setgid) stay usable by the other.
DAEMON_UID = 999
USER_UID = 1000
SANDBOX_GID = 1000
RANGE = 65536
DEFAULT_BASE = 100_000_000  # far above the ranges useradd hands out in /etc/subuid
SETUP_TIMEOUT = 5.0


class UsernsError(RuntimeError):
    """A user namespace could not be made; the message says why."""


def unavailable_reason() -> str | None:
    """None when mapped user namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "the gateway does not run as root, so it cannot map a range of ids"
    missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} (util-linux) not found"
    return None


def host_id(base: int, inner: int) -> int:
    return base + inner


class UserNamespaces:
    """Makes the sandboxes' user namespaces for one gateway."""

    def __init__(self, base: int):
        self.base = base
        self._setup_fd: int | None = None

    def setup_fd(self) -> int:
        """The setup namespace (made on first use): the range, plus host root as id RANGE."""
        if self._setup_fd is None:
            maps = f"0 {self.base} {RANGE}\n{RANGE} 0 1\n"
            self._setup_fd = _new_namespace([], lambda pid: _write_maps(pid, maps))
        return self._setup_fd

    def create(self) -> int:
        """A sandbox's namespace: ids 0..RANGE-1 of the setup namespace, i.e. host BASE.. ."""
        setup = self.setup_fd()
        enter_setup = ["nsenter", f"--user=/proc/self/fd/{setup}", "--"]

        def map_and_limit(pid: int) -> None:
            # From inside the setup namespace (its root may write a child's maps), then from inside
            # the new one (whose root may lower its own limit).
            script = (f"echo '0 0 {RANGE}' > /proc/{pid}/uid_map && echo '0 0 {RANGE}' > /proc/{pid}/gid_map && "
                      f"nsenter --user=/proc/{pid}/ns/user -- /bin/sh -c 'echo 0 > /proc/sys/user/max_user_namespaces'")
            _run([*enter_setup, "/bin/sh", "-c", script], pass_fds=(setup,))

        return _new_namespace(enter_setup, map_and_limit, pass_fds=(setup,))

    def close(self) -> None:
        if self._setup_fd is not None:
            os.close(self._setup_fd)
            self._setup_fd = None


def _new_namespace(prefix: list[str], prepare, pass_fds: tuple[int, ...] = ()) -> int:
    """Start a holder in a new user namespace (after `prefix`), let `prepare(pid)` map it, and
    return an fd on the namespace once the holder is gone."""
    before = {os.readlink("/proc/self/ns/user")} | {os.readlink(f"/proc/self/fd/{fd}") for fd in pass_fds}
    holder = subprocess.Popen([*prefix, "unshare", "--user", "--", "sleep", "60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds)
    try:
        _wait_unshared(holder, before)
        prepare(holder.pid)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsernsError(f"cannot set up a user namespace for the sandbox: {exc}") from exc
    finally:
        holder.kill()
        holder.wait()
        if holder.stderr:
            holder.stderr.close()


def _wait_unshared(holder: subprocess.Popen, before: set[str]) -> None:
    """Until the holder is in a namespace of its own (unshare runs before it execs sleep)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        if holder.poll() is not None:
            raise UsernsError(f"unshare --user failed: {holder.stderr.read().decode().strip()}")
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/user") not in before:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UsernsError("unshare --user did not create a namespace in time")
        time.sleep(0.001)


def _write_maps(pid: int, maps: str) -> None:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(maps)


def _run(argv: list[str], pass_fds: tuple[int, ...]) -> None:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=SETUP_TIMEOUT,
                            pass_fds=pass_fds)
    if result.returncode != 0:
        raise UsernsError(f"cannot map the sandbox's ids: {result.stderr.decode().strip() or result.returncode}")
