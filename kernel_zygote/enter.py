"""Into the sandbox: what the zygote's forked child does before it forks the kernel.

In this order, each step needing what the previous one still had:

1. join the sandbox's cgroups and take its rlimits, while still the zygote's host root (from
   outside, so that the move is allowed and counted before anything else runs);
2. enter the sandbox's cgroup, ipc, uts, net, pid (for children) and mount namespaces, and its
   user namespace *last*: those other namespaces belong to the gateway's setup user namespace,
   the parent of the sandbox's own (see the gateway's userns.py), so from inside the sandbox's
   user namespace this process would hold no capability over them (setns of the mount
   namespace then fails with EPERM);
3. become the kernel's user: no supplementary groups, its gid and uid (real, effective, saved),
   an empty capability bounding set, no ambient, effective, permitted or inheritable
   capabilities, and no_new_privs. Entering a user namespace grants every capability in it, and
   since this process's uid was never the namespace's root, changing uids would not drop them:
   they are dropped explicitly and checked afterwards;
4. the umask and working directory PicoD asked for, now with the user's rights only.

The pid namespace applies to children only, so the kernel is the *next* fork (see server.py).
The sandboxes have no seccomp filter (bubblewrap is given none); should they get one, this is
where the same filter must be loaded, after no_new_privs.
"""

from __future__ import annotations

import os
import resource

from . import linux
from .request import RLIMITS, Request

# Which namespaces, in which order (see 2. above).
NAMESPACE_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt", "user")


def enter_sandbox(request: Request, last_capability: int) -> None:
    """Steps 1 to 4; raises OSError naming the call that failed."""
    for fd in request.cgroups:
        try:
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:
            raise OSError(exc.errno, f"joining the sandbox's cgroup: {exc.strerror}") from None
        os.close(fd)
    request.cgroups.clear()
    for name, value in request.rlimits.items():
        try:
            resource.setrlimit(RLIMITS[name], (value, value))
        except (OSError, ValueError) as exc:
            raise OSError(getattr(exc, "errno", None), f"setrlimit({name}={value}): {exc}") from None
    for kind in NAMESPACE_ORDER:
        linux.setns(request.namespaces[kind], kind)
        os.close(request.namespaces.pop(kind))
    drop_privileges(request.uid, request.gid, last_capability)
    os.umask(request.umask)
    os.chdir(request.cwd)


def drop_privileges(uid: int, gid: int, last_capability: int) -> None:
    """Become uid:gid with no capability at all and no way to gain one; checked."""
    for capability in range(last_capability + 1):
        linux.prctl(linux.PR_CAPBSET_DROP, capability, what=f"dropping capability {capability}")
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL, what="clearing ambient capabilities")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    linux.clear_capabilities()
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1, what="setting no_new_privs")
    _check_dropped(uid, gid, last_capability)


def _check_dropped(uid: int, gid: int, last_capability: int) -> None:
    problems = []
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups() not in ([], [gid]):
        problems.append(f"ids {os.getresuid()} {os.getresgid()} {os.getgroups()}")
    if any(linux.capabilities()):
        problems.append(f"capabilities {linux.capabilities()}")
    if any(linux.prctl(linux.PR_CAPBSET_READ, c) for c in range(last_capability + 1)):
        problems.append("a capability left in the bounding set")
    if linux.prctl(linux.PR_GET_NO_NEW_PRIVS) != 1:
        problems.append("no_new_privs not set")
    if problems:
        raise OSError(f"privileges not dropped: {'; '.join(problems)}")
