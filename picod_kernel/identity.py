"""Who user code runs as: `--run-as UID:GID` makes every command and the kernel run as that
user, apart from the daemon's own id, so user code can neither signal nor trace PicoD.

The daemon keeps only what that takes (switching ids, signalling the user's processes); the
capabilities it was started with are *ambient* ones, which would otherwise pass to everything it
runs, so they are cleared first. User code then starts with no capabilities at all.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# Files each side writes stay readable and writable by the other through the shared group.
SHARED_UMASK = 0o002


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int

    @classmethod
    def parse(cls, text: str) -> RunAs:
        try:
            uid, gid = (int(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"--run-as must be UID:GID (numbers), not {text!r}") from None
        if uid < 0 or gid < 0:
            raise ValueError("--run-as ids must be >= 0")
        return cls(uid, gid)

    def popen_kwargs(self) -> dict:
        """subprocess.Popen arguments that start a process as this user, with no other groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "umask": SHARED_UMASK}


def become_daemon_for(run_as: RunAs) -> None:
    """Prepare this process to start user code as `run_as`; fail clearly when it cannot."""
    if os.getuid() == run_as.uid:
        raise ValueError(f"--run-as {run_as.uid}:{run_as.gid} is PicoD's own uid; user code must run as another")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot clear ambient capabilities")
    os.umask(SHARED_UMASK)


def kwargs_for(run_as: RunAs | None) -> dict:
    return run_as.popen_kwargs() if run_as else {}
