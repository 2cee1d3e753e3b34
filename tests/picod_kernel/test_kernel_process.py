"""PicoD's own side of the Jupyter wire: its messages are signed as Jupyter signs them (each side
verifies the other's), its kernel's connection file is the one Jupyter would write, and the
daemon runs a kernel without loading jupyter_client (nor what it pulls in) in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys

import pytest
from jupyter_client.session import Session as JupyterSession

from picod_kernel.kernel_process import KernelProcess
from picod_kernel.session import DELIM, Session, new_id

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_message_signed_by_picod_verifies_with_jupyter_client():
    key = new_id().encode()
    ours, theirs = Session(key), JupyterSession(key=key)
    msg = ours.msg("execute_request", {"code": "print('é ✓')", "silent": False, "user_expressions": {}},
                   metadata={"cell": 1})
    frames = ours.serialize(msg, ident=[b"routing-id"])
    idents, rest = theirs.feed_identities(frames)
    assert idents == [b"routing-id"]
    got = theirs.deserialize(rest)  # raises on a bad signature
    assert got["header"]["msg_id"] == msg["msg_id"] and got["header"]["version"] == "5.4"
    assert got["header"]["session"] == ours.session and got["metadata"] == {"cell": 1}
    assert got["content"]["code"] == "print('é ✓')"


def test_a_message_signed_by_jupyter_client_verifies_with_picod():
    key = new_id().encode()
    ours, theirs = Session(key), JupyterSession(key=key)
    parent = theirs.msg("kernel_info_request", {})
    frames = theirs.serialize(theirs.msg("status", {"execution_state": "idle"}, parent=parent), ident=b"x")
    idents, rest = ours.feed_identities(frames)
    assert idents == [b"x"] and rest[0] == ours.sign(rest[1:5])
    assert json.loads(rest[2])["msg_id"] == parent["header"]["msg_id"]
    with pytest.raises(Exception, match="Invalid Signature"):  # another key: refused
        JupyterSession(key=b"other").deserialize(ours.serialize(ours.msg("status", {}))[1:])


def test_clones_share_the_key_but_never_a_message_id():
    session = Session(b"k")
    clone = session.clone()
    assert clone.key == session.key and clone.session != session.session
    assert session.msg("a")["msg_id"] != clone.msg("a")["msg_id"]
    assert session.serialize({"header": {}, "parent_header": {}, "metadata": {}, "content": b"{}"})[0] == DELIM


def test_the_connection_file_is_written_as_jupyter_writes_it_and_kept_across_restarts(tmp_path):
    os.chmod(tmp_path, 0o770)
    (tmp_path / "ipc-2").touch()  # a socket file in the way: its number is skipped
    kernel = KernelProcess(str(tmp_path), [sys.executable, "-c", "import time; time.sleep(60)", "{connection_file}"],
                           "picod-python")
    kernel.write_connection_file()
    path = tmp_path / "connection.json"
    info = json.loads(path.read_text())
    assert info == {"shell_port": 1, "iopub_port": 3, "stdin_port": 4, "control_port": 5, "hb_port": 6,
                    "ip": str(tmp_path / "ipc"), "key": kernel.session.key.decode(), "transport": "ipc",
                    "signature_scheme": "hmac-sha256", "kernel_name": "picod-python"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tmp_path.stat().st_mode & stat.S_ISVTX  # only its owner may remove it

    async def lifecycle() -> tuple[int, int, bool]:
        await kernel.start(str(tmp_path), {"PYTHONEXECUTABLE": "/nowhere", "A": "1"})
        first = kernel.pid
        env = await _environ(first)
        assert env[b"JPY_PARENT_PID"] == str(os.getpid()).encode() and env[b"A"] == b"1"
        assert b"PYTHONEXECUTABLE" not in env and os.getpgid(first) == first
        path.unlink()  # gone: written again, the same
        await kernel.restart()
        second = kernel.pid
        assert kernel.is_alive() and second != first
        await kernel.shutdown()
        return first, second, path.exists()

    first, second, left = asyncio.run(lifecycle())
    assert not left  # removed at shutdown
    assert not os.path.exists(f"/proc/{first}") and not os.path.exists(f"/proc/{second}")  # killed and reaped


async def _environ(pid: int) -> dict[bytes, bytes]:
    """A new process's environment, once its exec has set it up (empty a moment before)."""
    for _ in range(100):
        if env := _read_environ(pid):
            return env
        await asyncio.sleep(0.01)
    return {}


def _read_environ(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)


def test_a_daemon_with_a_kernel_never_loads_jupyter_client(tmp_path):
    script = """
import asyncio, json, sys
import picod_kernel.app
from picod_kernel.kernel import KernelBridge

async def main():
    bridge = KernelBridge(sys.argv[1])
    await bridge.start()
    result = await bridge.execute("6 * 7")
    await bridge.restart()
    await bridge.shutdown()
    heavy = sorted({name.split(".")[0] for name in sys.modules}
                   & {"jupyter_client", "traitlets", "jupyter_core", "dateutil", "platformdirs", "tornado"})
    print(json.dumps({"state": bridge.state, "failure": bridge.failure, "result": result, "heavy": heavy}))

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["state"] == "ready", report["failure"]
    assert report["result"]["results"][0]["text/plain"] == "42"
    assert report["heavy"] == []
