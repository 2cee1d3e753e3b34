"""The few Linux calls Python 3.11's os module lacks (setns, prctl, capset), through libc.

Each raises OSError with the call's name and errno, so a failure in the forked child can be
reported exactly ("setns(mnt): [Errno 1] Operation not permitted").
"""

from __future__ import annotations

import ctypes
import os

NAMESPACE_FLAGS = {"cgroup": 0x02000000, "ipc": 0x08000000, "uts": 0x04000000, "net": 0x40000000,
                   "pid": 0x20000000, "mnt": 0x00020000, "user": 0x10000000}
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def setns(fd: int, kind: str) -> None:
    _check(_libc.setns(fd, NAMESPACE_FLAGS[kind]), f"setns({kind})")


def prctl(option: int, arg: int = 0, what: str = "prctl") -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0)), what)


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (of this thread, the only one)."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return tuple((data[1].__getattribute__(name) << 32) | data[0].__getattribute__(name)
                 for name in ("effective", "permitted", "inheritable"))
