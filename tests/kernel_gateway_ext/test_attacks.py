"""The local sandbox as a security boundary, attacked from inside a session as hostile code that
knows how KernelCube works would: through `/v1/execute`, in Python and in bash. Each test asserts
that the attack fails, that the session and another session carry on, and (from the host) that
nothing of the host was touched.

Covered: never host root (uid map, host-only files, workspace owner on the host, setuid bits),
host kernel settings (/proc/sys), PicoD out of reach (signals, ptrace, its environment, its
socket and run directory), nested user namespaces and privileges, memory bomb, fork bomb, disk
and /tmp fill, the peer check on the socket the gateway dials, and no host paths in answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from kernel_gateway_ext.providers import userns

from .conftest import body, picod_pid, wait_ready

BASE = userns.DEFAULT_BASE
USER = BASE + userns.USER_UID


@pytest.fixture
def small_limits(gateway_config):
    """A template with small limits so that the bombs end quickly."""
    gateway_config["templates"] = {"small": {"pool_size": 1, "limits": {
        "memory": "400M", "processes": 128, "disk": "64M", "tmp": "16M", "shm": "8M"}}}


async def run(jp_fetch, code: str, session_id: str | None = None, language: str = "python",
              timeout: float = 60, template: str | None = None) -> dict:
    payload = {"code": code, "language": language, "timeout": timeout}
    if session_id:
        payload["session_id"] = session_id
    if template:
        payload["template"] = template
    response = await jp_fetch("v1", "execute", method="POST", body=json.dumps(payload), raise_error=False,
                              request_timeout=timeout + 60)
    assert response.code == 200, response.body
    return body(response)


async def still_fine(jp_fetch, *session_ids: str) -> None:
    """Each session still runs code, and a brand-new session does too."""
    for session_id in session_ids:
        result = await run(jp_fetch, "6 * 7", session_id)
        assert result["results"][0]["text/plain"] == "42", result
    fresh = await run(jp_fetch, "6 * 7")
    assert fresh["results"][0]["text/plain"] == "42"


async def sandbox_of(gateway, session_id: str) -> dict:
    return (await gateway.store.get(session_id)).sandbox


async def host_picod_pid(gateway, session_id: str) -> int:
    """PicoD's host pid, as the gateway recorded and checks it."""
    return (await sandbox_of(gateway, session_id))["endpoint"]["peer"]["pid"]


async def test_user_code_is_never_host_root(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    code = ("import os, stat, shutil\n"
            "denied = []\n"
            "for path in ('/etc/shadow', '/etc/gshadow'):\n"
            "    try:\n"
            "        open(path).read()\n"
            "    except PermissionError:\n"
            "        denied.append(path)\n"
            "open('mine.txt', 'w').write('x')\n"
            "shutil.copy('/bin/sh', 'rootshell')\n"
            "os.chmod('rootshell', 0o6755)\n"
            "print(os.getuid(), os.geteuid(), os.getgid(), open('/proc/self/uid_map').read().split(), denied)")
    result = await run(jp_fetch, code)
    uid, euid, gid, *rest = result["stdout"].split(" ", 3)
    assert (int(uid), int(euid), int(gid)) == (userns.USER_UID, userns.USER_UID, userns.SANDBOX_GID)
    mapping, denied = rest[0].split("] ")
    assert mapping.strip("[").replace("'", "").split(", ") == ["0", "0", str(userns.RANGE)]
    assert "/etc/shadow" in denied
    bash = await run(jp_fetch, "cat /etc/shadow; ls /etc/ssl/private; id -u", result["session_id"], "bash")
    assert "Permission denied" in bash["stderr"] and bash["stdout"].strip() == str(userns.USER_UID)

    # From the host: the sandbox's files belong to the unprivileged range, and the setuid copy
    # sits on a nosuid in-memory filesystem, on no host directory at all.
    pid = await host_picod_pid(gateway, result["session_id"])
    assert pid == picod_pid((await sandbox_of(gateway, result["session_id"]))["handle"]["pid"])
    workspace = f"/proc/{pid}/root/workspace"
    assert os.stat(f"{workspace}/mine.txt").st_uid == USER
    assert os.stat(f"/proc/{pid}").st_uid == BASE + userns.DAEMON_UID
    assert os.statvfs(workspace).f_flag & os.ST_NOSUID
    assert os.stat(f"{workspace}/rootshell").st_uid == USER  # not root: never a root shell
    assert not any("rootshell" in files for _, _, files in os.walk(gateway.provider.root))
    await still_fine(jp_fetch, result["session_id"])


async def test_host_kernel_settings_are_untouchable(jp_fetch, gateway):
    code = ("import os\n"
            "written = []\n"
            "for top, dirs, files in os.walk('/proc/sys'):\n"
            "    for name in files:\n"
            "        path = os.path.join(top, name)\n"
            "        try:\n"
            "            value = open(path).read()\n"
            "            with open(path, 'w') as f:\n"
            "                f.write(value)  # the same value: harmless if it ever succeeded\n"
            "            written.append(path)\n"
            "        except OSError:\n"
            "            pass\n"
            "for path in ('/proc/sysrq-trigger', '/sys/kernel/uevent_helper'):\n"
            "    try:\n"
            "        open(path, 'w').write('x')\n"
            "        written.append(path)\n"
            "    except OSError:\n"
            "        pass\n"
            "written")
    result = await run(jp_fetch, code)
    assert result["results"][0]["text/plain"] == "[]"
    bash = await run(jp_fetch, "echo '|/tmp/x' > /proc/sys/kernel/core_pattern; sysctl -w kernel.hostname=x",
                     result["session_id"], "bash")
    assert bash["exit_code"] != 0
    with open("/proc/sys/kernel/core_pattern") as f:  # noqa: ASYNC230 -- a test probe
        assert "/tmp/x" not in f.read()
    await still_fine(jp_fetch, result["session_id"])


async def test_picod_and_init_are_out_of_reach(jp_fetch, gateway):
    code = ("import ctypes, os, signal\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "daemon = [int(p) for p in os.listdir('/proc') if p.isdigit() and\n"
            "          b'picod_kernel' in open(f'/proc/{p}/cmdline', 'rb').read()][0]\n"
            "outcome = {}\n"
            "for target in (daemon, 1):\n"
            "    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n"
            "        try:\n"
            "            os.kill(target, sig)\n"
            "            outcome[f'kill {target} {sig.name}'] = 'sent'\n"
            "        except PermissionError:\n"
            "            pass\n"
            "    if libc.ptrace(16, target, 0, 0) == 0:  # PTRACE_ATTACH\n"
            "        outcome[f'ptrace {target}'] = 'attached'\n"
            "    for name in ('environ', 'mem'):\n"
            "        try:\n"
            "            open(f'/proc/{target}/{name}', 'rb').read(1)\n"
            "            outcome[f'read {target} {name}'] = 'read'\n"
            "        except OSError:\n"
            "            pass\n"
            "for attempt in ('os.listdir(\"/run/kernelcube\")', 'os.unlink(\"/run/kernelcube/picod.sock\")',\n"
            "                'os.symlink(\"/tmp/evil.sock\", \"/run/kernelcube/evil\")',\n"
            "                'open(\"/opt/kernelcube/picod_kernel/app.py\", \"a\")'):\n"
            "    try:\n"
            "        eval(attempt)\n"
            "        outcome[attempt] = 'done'\n"
            "    except OSError:\n"
            "        pass\n"
            "outcome")
    result = await run(jp_fetch, code)
    assert result["status"] == "ok" and result["results"][0]["text/plain"] == "{}", result
    # bash too: nested user namespaces, new privileges, capabilities.
    bash = await run(jp_fetch, "unshare -Ur id; unshare -U true && echo nested; grep -E 'NoNewPrivs|CapEff|CapPrm' "
                     "/proc/self/status; kill -9 1; pkill -9 -f picod_kernel; echo done", result["session_id"], "bash")
    assert "nested" not in bash["stdout"]
    assert "NoNewPrivs:\t1" in bash["stdout"] and "CapEff:\t0000000000000000" in bash["stdout"]
    assert "CapPrm:\t0000000000000000" in bash["stdout"]
    await still_fine(jp_fetch, result["session_id"])


async def test_memory_bomb_ends_that_execution_only(small_limits, jp_fetch, gateway):
    await wait_ready(jp_fetch)
    bystander = (await run(jp_fetch, "kept = 'still here'", template="small"))["session_id"]
    victim = (await run(jp_fetch, "kept = 1", template="small"))["session_id"]
    bomb = await run(jp_fetch, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))", victim)
    assert bomb["status"] == "dead" and bomb["error"]["name"] == "DeadKernelError"
    assert "out of memory" in bomb["error"]["value"]
    assert (await run(jp_fetch, "kept", bystander))["results"][0]["text/plain"] == "'still here'"
    await still_fine(jp_fetch, victim, bystander)


async def test_fork_bomb_and_disk_fill_end_with_errors(small_limits, jp_fetch, gateway):
    await wait_ready(jp_fetch)
    bystander = (await run(jp_fetch, "kept = 'still here'", template="small"))["session_id"]
    victim = (await run(jp_fetch, "1", template="small"))["session_id"]
    forks = await run(jp_fetch, "bomb() { bomb | bomb & }; bomb; sleep 3", victim, "bash", timeout=8)
    assert forks["status"] != "ok" or "fork" in forks["stderr"].lower() or "resource" in forks["stderr"].lower()
    await asyncio.sleep(0.5)
    fill = await run(jp_fetch, "dd if=/dev/zero of=big bs=1M count=200; dd if=/dev/zero of=/tmp/big bs=1M count=200; "
                     "df -h /workspace /tmp | tail -2", victim, "bash")
    assert fill["stderr"].count("No space left on device") == 2, fill
    python_fill = await run(jp_fetch, "open('more', 'wb').write(b'x' * 2**20)", victim)
    assert python_fill["status"] == "error" and "No space left" in python_fill["error"]["value"]
    assert (await run(jp_fetch, "kept", bystander))["results"][0]["text/plain"] == "'still here'"
    await run(jp_fetch, "rm -f big /tmp/big", victim, "bash")
    await still_fine(jp_fetch, victim, bystander)


async def test_a_replaced_socket_is_refused_and_ends_the_session(jp_fetch, gateway, tmp_path):
    """User code cannot replace PicoD's socket (see above); should anything else manage it, the
    gateway's peer check refuses to talk to whatever serves it and ends the session."""
    session = (await run(jp_fetch, "1"))["session_id"]
    sandbox = await sandbox_of(gateway, session)
    path = sandbox["endpoint"]["unix_socket"]
    await gateway.sessions._clients.pop(sandbox["id"]).close()  # no pooled connection to the real PicoD
    impostor = socket.socket(socket.AF_UNIX)
    try:
        os.rename(path, path + ".real")
        impostor.bind(path)
        impostor.listen()
        response = await jp_fetch("v1", "execute", method="POST", raise_error=False,
                                  body=json.dumps({"code": "1", "session_id": session}))
        assert response.code == 410, response.body
        error = body(response)
        assert "replaced" in error["error"] and gateway.provider.root not in error["error"]
        assert (await jp_fetch("v1", "sessions", session, raise_error=False)).code == 404
    finally:
        impostor.close()
    await still_fine(jp_fetch)


async def test_no_host_paths_in_answers(jp_fetch, gateway):
    created = await jp_fetch("v1", "code-interpreter", method="POST", raise_error=False,
                             body=json.dumps({"name": "default", "namespace": "default"}))
    text = created.body.decode()
    assert created.code in (200, 201), text
    assert gateway.provider.root not in text and "/run/" not in text
    inside = await run(jp_fetch, "import os; (os.getcwd(), os.environ.get('HOME'))")
    assert inside["results"][0]["text/plain"] == "('/workspace', '/workspace')"


async def test_modules_planted_in_the_workspace_never_run_as_picod(jp_fetch, gateway):
    """User code plants modules named like ones PicoD may import late, in the workspace (PicoD's
    working directory) and in the package directory (on the kernel's path); then PicoD serves
    files, commands and a kernel restart. None of them may run as PicoD."""
    names = ["mimetypes", "uuid", "email", "tarfile", "zipfile", "shutil", "secrets", "hmac", "tempfile",
             "asyncio_ext", "tornado", "jwt", "zmq", "jupyter_client"]
    plant = ("import os\n"
             f"for name in {names!r}:\n"
             "    for where in ('/workspace', '/workspace/.packages'):\n"
             "        with open(f'{where}/{name}.py', 'w') as f:\n"
             "            f.write('import os\\n'\n"
             "                    'if os.getuid() != 1000:\\n'\n"
             "                    f'    open(\"/workspace/ran-as-{{os.getuid()}}-{name}\", \"w\").close()\\n')\n"
             "'planted'")
    session = (await run(jp_fetch, plant))["session_id"]
    put = await jp_fetch("v1", "sessions", session, "files", "data.txt", method="PUT", body=b"payload")
    assert put.code == 201
    got = await jp_fetch("v1", "sessions", session, "files", "data.txt")
    assert got.body == b"payload"
    await run(jp_fetch, "ls -la; true", session, "bash")
    sandbox = await sandbox_of(gateway, session)
    client = gateway.sessions.client(await gateway.store.get(session))
    # The user's own kernel may well choke on the planted modules (503, kernel not restarted);
    # what matters is what ran as PicoD.
    restarted = await client.call_json("POST", "/api/kernel/restart", None,
                                       token=gateway.identity.token(session, sandbox["id"]), timeout=60)
    assert restarted[0] in (200, 503), restarted
    await run(jp_fetch, "rm -f /workspace/*.py /workspace/.packages/*.py", session, "bash")
    leftovers = await run(jp_fetch, "import glob; sorted(glob.glob('/workspace/ran-as-*'))", session)
    assert leftovers["results"][0]["text/plain"] == "[]"


async def test_an_output_flood_is_capped_before_the_gateway(jp_fetch, gateway):
    """48 MiB of print: the answer carries 32 MiB and says how much was dropped."""
    flood = await run(jp_fetch, "import sys\nfor _ in range(48):\n    sys.stdout.write('x' * 2**20)")
    assert len(flood["stdout"]) == 32 * 2**20
    assert f"stdout truncated: {16 * 2**20} bytes beyond the {32 * 2**20}-byte cap" in flood["stderr"]
    await still_fine(jp_fetch, flood["session_id"])


async def test_kernel_keyrings_are_not_shared_between_sessions(jp_fetch, gateway):
    """The kernel's user keyring is per user namespace: a key one session stores is not there
    for the next (same ids inside, different sandboxes)."""
    syscall = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
               "found = libc.syscall({call}, b'user', b'kc-secret', {payload}, {size}, {ring})\n"
               "(found > 0, ctypes.get_errno())")
    stored = await run(jp_fetch, syscall.format(call=248, payload="b'hello'", size=5, ring=-4))  # add_key
    assert stored["results"][0]["text/plain"] == "(True, 0)"
    searched = await run(jp_fetch, syscall.format(call=249, payload="None", size=0, ring=0))  # request_key
    assert searched["results"][0]["text/plain"] == "(False, 126)"  # ENOKEY
