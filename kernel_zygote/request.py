"""A fork request from the gateway, checked field by field.

The gateway builds it from its own knowledge of the sandbox (namespaces, cgroups, ids, limits)
plus what the sandbox's PicoD asked for (the kernel's arguments, environment, working directory
and umask). Those last four are used only once the child has become the sandbox's unprivileged
user, inside the sandbox; the rest never comes from a sandbox.

Descriptors travel beside the JSON (SCM_RIGHTS), in the order its `fds` list names their roles:
`report` (the child's one line to the gateway: the kernel's pid or why it failed), `status`
(the kernel's exit status, for PicoD), `log` (the kernel's stdout and stderr), `cgroup` (a
cgroup.procs file to join, any number) and `ns:<kind>` (one per namespace to enter).
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass, field

from .linux import NAMESPACE_FLAGS

RLIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "as": resource.RLIMIT_AS,
           "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE, "core": resource.RLIMIT_CORE,
           "memlock": resource.RLIMIT_MEMLOCK}
SINGLE_ROLES = ("report", "status", "log")


@dataclass
class Request:
    uid: int
    gid: int
    umask: int
    cwd: str
    env: dict[str, str]
    argv: list[str]
    rlimits: dict[str, int]
    fds: dict[str, int] = field(default_factory=dict)  # report, status, log
    cgroups: list[int] = field(default_factory=list)
    namespaces: dict[str, int] = field(default_factory=dict)

    def descriptors(self) -> list[int]:
        return [*self.fds.values(), *self.cgroups, *self.namespaces.values()]

    def close(self) -> None:
        for fd in self.descriptors():
            _close(fd)


def parse(data: bytes, fds: list[int]) -> Request:
    """The request in `data` with its descriptors; ValueError (the descriptors closed) if any
    field is missing or of the wrong kind."""
    try:
        return _parse(data, fds)
    except (ValueError, KeyError, TypeError) as exc:
        for fd in fds:
            _close(fd)
        raise ValueError(f"bad fork request: {exc}") from None


def _parse(data: bytes, fds: list[int]) -> Request:
    body = json.loads(data)["fork"]
    request = Request(uid=_int(body["uid"]), gid=_int(body["gid"]), umask=_int(body["umask"], 0o777),
                      cwd=_text(body["cwd"]), env=_strings(body["env"]), argv=_text_list(body["argv"]),
                      rlimits={name: _int(value) for name, value in dict(body["rlimits"]).items()})
    unknown = set(request.rlimits) - set(RLIMITS)
    if unknown:
        raise ValueError(f"unknown rlimits {sorted(unknown)}")
    roles = _text_list(body["fds"])
    if len(roles) != len(fds):
        raise ValueError(f"{len(roles)} descriptor roles for {len(fds)} descriptors")
    for role, fd in zip(roles, fds, strict=True):
        if role == "cgroup":
            request.cgroups.append(fd)
        elif role.startswith("ns:") and role[3:] in NAMESPACE_FLAGS and role[3:] not in request.namespaces:
            request.namespaces[role[3:]] = fd
        elif role in SINGLE_ROLES and role not in request.fds:
            request.fds[role] = fd
        else:
            raise ValueError(f"unexpected descriptor role {role!r}")
    missing = [r for r in SINGLE_ROLES if r not in request.fds] + \
              [f"ns:{k}" for k in NAMESPACE_FLAGS if k not in request.namespaces]
    if missing:
        raise ValueError(f"missing descriptors {missing}")
    if not os.path.isabs(request.cwd):
        raise ValueError("cwd must be an absolute path")
    return request


def _int(value, highest: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
        raise ValueError(f"{value!r} is not an integer in 0..{highest}")
    return value


def _text(value) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"{value!r} is not a string without NUL")
    return value


def _text_list(value) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("expected a list of strings")
    return [_text(item) for item in value]


def _strings(value) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("env must be a mapping of strings")
    env = {_text(k): _text(v) for k, v in value.items()}
    if any(not k or "=" in k for k in env):
        raise ValueError("environment names must be non-empty and without '='")
    return env


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
