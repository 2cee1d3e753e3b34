"""The kernel zygote's new surface, attacked. With kernels forked from a zygote, user code in
one sandbox cannot see or signal the zygote, the supervisors or other sandboxes' processes; it
runs as the kernel's uid with no capability at all (bounding set included) and no_new_privs, in
its own sandbox's cgroups, with random state of its own; it cannot reach the channel PicoD asks
for kernels on, nor the zygote's; and even a request on that channel made as PicoD itself (a
compromised PicoD, played here by stealing its descriptor) only ever gets a kernel inside that
same sandbox, as its user, whatever the request says."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket

import pytest

from kernel_gateway_ext.providers import userns

from .conftest import wait_ready
from .test_attacks import run, sandbox_of, still_fine
from .zygote_processes import alive, cmdline, forked, namespace, read, status, zygotes

USER = userns.DEFAULT_BASE + userns.USER_UID
NO_CAPABILITIES = "0000000000000000"
PIDFD_GETFD = 438  # x86_64


@pytest.fixture
def zygote_on(gateway_config):
    gateway_config["kernel_zygote"] = "on"
    gateway_config["pool_size"] = 2


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def channel_fd(picod: int) -> int:
    argv = cmdline(picod).split(b"\0")
    return int(argv[argv.index(b"--kernel-channel-fd") + 1])


def steal(pid: int, fd: int) -> int:
    """A duplicate of another process's descriptor (pidfd_getfd; we are host root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = os.pidfd_open(pid)
    try:
        stolen = libc.syscall(PIDFD_GETFD, pidfd, fd, 0)
        assert stolen >= 0, os.strerror(ctypes.get_errno())
        return stolen
    finally:
        os.close(pidfd)


def host_pid(inner_pid: int, pid_namespace: str) -> int | None:
    """The host pid of the process with this pid inside a pid namespace."""
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if namespace(int(name), "pid") == pid_namespace and status(int(name))["NSpid"].split()[-1] == str(inner_pid):
                return int(name)
        except (OSError, KeyError):
            continue
    return None


async def ask(sock: socket.socket, message) -> tuple[dict, list[int]]:
    """One request and its answer, as PicoD makes it (in a thread: the gateway answering it runs
    on this test's event loop)."""
    sock.send(message if isinstance(message, bytes) else json.dumps(message).encode())
    data, fds, _, _ = await asyncio.to_thread(socket.recv_fds, sock, 65536, 1)
    return json.loads(data), fds


async def two_sessions(jp_fetch, gateway) -> tuple[dict, dict]:
    await wait_ready(jp_fetch, timeout=120)
    first = await run(jp_fetch, "1")
    second = await run(jp_fetch, "2")
    return (await sandbox_of(gateway, first["session_id"]) | {"session": first["session_id"]},
            await sandbox_of(gateway, second["session_id"]) | {"session": second["session_id"]})


async def test_a_forked_kernel_sees_and_signals_nothing_outside_its_sandbox(zygote_on, jp_fetch, gateway):
    mine, other = await two_sessions(jp_fetch, gateway)
    assert mine["handle"]["kernel_source"] == "zygote"
    kernel, supervisor = forked(mine)
    other_kernel, other_supervisor = forked(other)
    outside = [*zygotes(gateway), supervisor, other_kernel, other_supervisor,
               other["endpoint"]["peer"]["pid"], os.getpid()]
    code = ("import ctypes, os, signal\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "visible = {int(p): open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()}\n"
            "zygote_like = sorted(p for p, c in visible.items() if b'kernel_zygote' in c and p != os.getpid())\n"
            "reached = []\n"
            f"for target in {outside!r}:\n"
            "    for sig in (0, signal.SIGKILL):\n"
            "        try:\n"
            "            os.kill(target, sig)\n"
            "            reached.append((target, sig))\n"
            "        except ProcessLookupError:\n"
            "            pass\n"
            "    if libc.ptrace(16, target, 0, 0) == 0:\n"
            "        reached.append((target, 'ptrace'))\n"
            "sorted(visible), zygote_like, reached, os.getppid()")
    result = await run(jp_fetch, code, mine["session"])
    visible, zygote_like, reached, parent = eval(result["results"][0]["text/plain"])  # noqa: S307 -- our literal
    assert zygote_like == [] and reached == [] and parent == 0, result
    assert len(visible) <= 4, visible  # the namespace's init, PicoD, this kernel (and a passing child)
    # The hardest it can try: every process it may signal (all but itself and its namespace's init).
    killed = await run(jp_fetch, "import os, signal; os.kill(-1, signal.SIGKILL)", mine["session"])
    assert killed["status"] == "ok", killed
    assert all(alive(pid) for pid in [*outside, kernel, mine["endpoint"]["peer"]["pid"]])
    await still_fine(jp_fetch, mine["session"], other["session"])


async def test_a_forked_kernel_and_its_supervisor_hold_no_privilege(zygote_on, jp_fetch, gateway):
    mine, _ = await two_sessions(jp_fetch, gateway)
    inside = await run(jp_fetch, "print(open('/proc/self/status').read())", mine["session"])
    seen = dict(line.split(":\t", 1) for line in inside["stdout"].splitlines() if ":\t" in line)
    assert seen["Uid"].split() == [str(userns.USER_UID)] * 4 and seen["Gid"].split() == [str(userns.SANDBOX_GID)] * 4
    assert seen["Groups"].strip() == "" and seen["NoNewPrivs"] == "1"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert seen[cap] == NO_CAPABILITIES, (cap, seen[cap])
    kernel, supervisor = forked(mine)
    for pid in (kernel, supervisor):
        host = status(pid)
        assert host["Uid"].split() == [str(USER)] * 4 and host["NoNewPrivs"] == "1"
        assert {host[c] for c in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {NO_CAPABILITIES}
    # What they hold: the sandbox's log and (the supervisor) the kernel's status pipe and pidfd;
    # nothing of the zygote or the gateway.
    log = os.path.join(mine["handle"]["dir"], "sandbox.log")
    for pid in (kernel, supervisor):
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        files = {target for target in held if target.startswith("/")}
        assert files <= {log, "/dev/null"}, files
    assert {t.split(":")[0] for t in held} <= {log, "/dev/null", "pipe", "anon_inode"}, held  # no socket
    # The zygote itself: host root with only what entering namespaces takes.
    for zygote in zygotes(gateway):
        host = status(zygote)
        assert host["CapEff"] == host["CapPrm"] == "0000000000240000"  # CAP_SYS_ADMIN | CAP_SYS_CHROOT
        assert host["NoNewPrivs"] == "1"


async def test_a_forked_kernel_lives_in_its_own_sandboxs_cgroups(zygote_on, jp_fetch, gateway):
    mine, other = await two_sessions(jp_fetch, gateway)
    kernel, supervisor = forked(mine)
    picods = read(f"/proc/{mine['endpoint']['peer']['pid']}/cgroup")
    assert mine["id"] in picods
    for pid in (kernel, supervisor):
        assert read(f"/proc/{pid}/cgroup") == picods
    bomb = await run(jp_fetch, "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 2**20))", mine["session"])
    assert bomb["status"] == "dead" and "out of memory" in bomb["error"]["value"], bomb
    await still_fine(jp_fetch, mine["session"], other["session"])


async def test_forked_kernels_have_random_state_of_their_own(zygote_on, jp_fetch, gateway):
    mine, other = await two_sessions(jp_fetch, gateway)
    draw = "import random, numpy; (random.random(), random.getrandbits(64), numpy.random.random(), numpy.random.randint(2**62))"
    first = (await run(jp_fetch, draw, mine["session"]))["results"][0]["text/plain"]
    second = (await run(jp_fetch, draw, other["session"]))["results"][0]["text/plain"]
    assert [a != b for a, b in zip(eval(first), eval(second), strict=True)] == [True] * 4  # noqa: S307


async def test_user_code_cannot_reach_the_kernel_channel_or_the_zygote(zygote_on, jp_fetch, gateway):
    mine, _ = await two_sessions(jp_fetch, gateway)
    picod = mine["endpoint"]["peer"]["pid"]
    channel = os.readlink(f"/proc/{picod}/fd/{channel_fd(picod)}")
    private = {channel, *(s for z in zygotes(gateway) for s in socket_inodes(z)),
               *socket_inodes(os.getpid())}
    # The gateway made these sockets, in its network namespace: none has a name to connect to.
    named = {line.split()[6] for line in read("/proc/self/net/unix").splitlines()[1:] if len(line.split()) > 7}
    assert not {inode.strip("socket:[]") for inode in private} & named
    code = ("import os\n"
            "seen, refused = set(), []\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n"
            "        fds = os.listdir(f'/proc/{pid}/fd')\n"
            "    except PermissionError:\n"
            "        refused.append(int(pid))\n"
            "        continue\n"
            "    for fd in fds:\n"
            "        try:\n"
            "            seen.add(os.readlink(f'/proc/{pid}/fd/{fd}'))\n"
            "        except OSError:\n"
            "            pass\n"
            "unix = open('/proc/net/unix').read()\n"
            "sorted(seen), refused, unix")
    result = await run(jp_fetch, code, mine["session"])
    seen, refused, unix = eval(result["results"][0]["text/plain"])  # noqa: S307 -- our literal
    assert not set(seen) & private, set(seen) & private
    in_sandbox = {line.split()[6] for line in unix.splitlines()[1:] if len(line.split()) > 6}
    assert not {inode.strip("socket:[]") for inode in private} & in_sandbox
    assert refused  # PicoD's descriptors, the channel among them, are not user code's to list
    shell = await run(jp_fetch, f"ls -l /proc/{refused[0]}/fd/; cat /proc/{refused[0]}/fdinfo/0", mine["session"],
                      language="bash")
    assert "Permission denied" in shell["stderr"] and "socket:" not in shell["stdout"]


async def test_a_channel_only_yields_kernels_in_its_own_sandbox(zygote_on, jp_fetch, gateway):
    """Playing a compromised PicoD: a request on sandbox A's channel, asking for whatever it
    likes, gets a kernel in A's namespaces and cgroups, as A's user, never elsewhere."""
    mine, other = await two_sessions(jp_fetch, gateway)
    picod = mine["endpoint"]["peer"]["pid"]
    inner = namespace(mine["handle"]["init"], "pid")
    stolen = socket.socket(fileno=steal(picod, channel_fd(picod)))
    try:
        stolen.settimeout(60)
        python = cmdline(picod).split(b"\0")[0].decode()
        refused, fds = await ask(stolen, {"kernel": {"python": "/bin/sh", "argv": [], "env": {}, "cwd": "/", "umask": 0}})
        assert refused["ok"] is False and fds == []
        garbled, fds = await ask(stolen, b"not json at all")
        assert garbled["ok"] is False and fds == []
        request = {"python": python, "argv": ["-f", "/tmp/hostile.json"], "cwd": "/", "umask": 0,
                   "env": {"PATH": "/usr/bin:/bin", "HOME": "/", "LD_PRELOAD": "/workspace/evil.so"},
                   "uid": 0, "gid": 0, "namespaces": {"pid": "/proc/1/ns/pid"}, "cgroups": ["/sys/fs/cgroup"]}
        answer, fds = await ask(stolen, {"kernel": request})
        assert answer["ok"] is True and len(fds) == 1, answer
        status_pipe = fds[0]
        hostile = host_pid(answer["pid"], inner)
        assert hostile is not None and namespace(hostile, "pid") != namespace(other["handle"]["init"], "pid")
        seen = status(hostile)
        assert seen["Uid"].split() == [str(USER)] * 4 and seen["CapEff"] == seen["CapBnd"] == NO_CAPABILITIES
        for kind in ("mnt", "net", "ipc", "uts", "user", "cgroup"):
            assert namespace(hostile, kind) == namespace(picod, kind), kind
        assert read(f"/proc/{hostile}/cgroup") == read(f"/proc/{picod}/cgroup")
        os.close(status_pipe)  # as PicoD giving up on it: its supervisor kills it
        for _ in range(100):
            if not alive(hostile):
                break
            await asyncio.sleep(0.05)
        assert not alive(hostile)
    finally:
        stolen.close()
    await still_fine(jp_fetch, mine["session"], other["session"])
