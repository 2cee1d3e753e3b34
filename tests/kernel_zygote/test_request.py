"""The zygote's fork request: every field checked, descriptors matched to their roles, and on
any fault all descriptors closed (a refused request leaks nothing into the zygote)."""

from __future__ import annotations

import json
import os

import pytest

from kernel_zygote.request import parse

ROLES = ["report", "status", "log", "cgroup", "cgroup", *(f"ns:{k}" for k in
                                                         ("cgroup", "ipc", "uts", "net", "pid", "mnt", "user"))]


def request(**changes) -> dict:
    body = {"uid": 1000, "gid": 1000, "umask": 0o002, "cwd": "/workspace", "env": {"HOME": "/workspace"},
            "argv": ["-f", "/tmp/k.json"], "rlimits": {"nofile": 4096}, "fds": ROLES}
    body.update(changes)
    return {"fork": body}


def descriptors(n: int) -> list[int]:
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]


def closed(fds: list[int]) -> bool:
    for fd in fds:
        try:
            os.fstat(fd)
            return False
        except OSError:
            pass
    return True


def test_a_good_request_sorts_its_descriptors_by_role():
    fds = descriptors(len(ROLES))
    parsed = parse(json.dumps(request()).encode(), fds)
    assert (parsed.fds["report"], parsed.fds["status"], parsed.fds["log"]) == tuple(fds[:3])
    assert parsed.cgroups == fds[3:5] and list(parsed.namespaces) == ["cgroup", "ipc", "uts", "net", "pid", "mnt", "user"]
    assert (parsed.uid, parsed.umask, parsed.argv, parsed.rlimits) == (1000, 2, ["-f", "/tmp/k.json"], {"nofile": 4096})
    parsed.close()
    assert closed(fds)


@pytest.mark.parametrize("changes", [
    {"uid": -1}, {"uid": "0"}, {"umask": 0o1000}, {"cwd": "workspace"}, {"env": {"A=B": "c"}},
    {"env": {"A": 1}}, {"argv": ["x\0y"]}, {"rlimits": {"stack": 1}}, {"fds": ROLES[:-1]},
    {"fds": [*ROLES[:-2], "ns:user", "ns:user"]}, {"fds": ["log", *ROLES[1:]]},
    {"fds": [*ROLES[:-1], "ns:time"]},
])
def test_a_bad_request_is_refused_and_closes_what_came_with_it(changes):
    fds = descriptors(len(ROLES))
    with pytest.raises(ValueError, match="bad fork request"):
        parse(json.dumps(request(**changes)).encode(), fds)
    assert closed(fds)


def test_garbage_is_refused():
    fds = descriptors(2)
    with pytest.raises(ValueError):
        parse(b"\xff not json", fds)
    assert closed(fds)
