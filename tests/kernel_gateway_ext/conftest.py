"""Fixtures for the gateway: a real jupyter_server with the extension (pytest-jupyter), real
bubblewrap sandboxes from the sandbox Python built by `make install`, and helpers to wait for
pools and to check that nothing was left running."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from kernel_gateway_ext.providers.local import _descendants
from tests.support.gateway import REPO, SANDBOX_PYTHON, TOKEN
from tests.support.rawhttp import Connection

__all__ = ["REPO", "SANDBOX_PYTHON", "TOKEN"]


def sandbox_processes(root: str) -> list[int]:
    """Pids of live processes started for sandboxes under a provider's root directory."""
    marker = f"{root}/".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(") ")[1][0] == "Z"
        except OSError:
            continue
        if marker in cmdline and not zombie:
            found.append(int(pid))
    return found


def picod_pid(sandbox_pid: int) -> int:
    """The PicoD daemon among the sandbox's processes."""
    for pid in _descendants(sandbox_pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        # bubblewrap's namespace init carries the whole command line too
        if b"picod_kernel.daemon" in b" ".join(argv) and not argv[0].endswith(b"bwrap"):
            return pid
    raise AssertionError("no PicoD process found in the sandbox")


def wait_gone(root: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := sandbox_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def jp_base_url() -> str:
    # The agentcube-sdk joins an absolute path onto ROUTER_URL, dropping any prefix: the
    # AgentCube faces must be served at the root, as in production.
    return "/"


@pytest.fixture
def gateway_config() -> dict:
    """Per-test overrides of KernelCubeApp traits; tests update it before the server starts."""
    return {}


@pytest.fixture
def state_dir(tmp_path) -> str:
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


@pytest.fixture
def jp_server_config(state_dir, gateway_config):
    if not os.path.exists(SANDBOX_PYTHON):
        pytest.fail(f"the sandbox Python {SANDBOX_PYTHON} is missing: run `make install` first")
    config = {"state_dir": state_dir, "pool_size": 1, "sandbox_python": SANDBOX_PYTHON,
              "claim_timeout": 30.0, **gateway_config}
    return {"ServerApp": {"jpserver_extensions": {"kernel_gateway_ext": True}},
            "IdentityProvider": {"token": TOKEN},
            "KernelCubeApp": config}


@pytest.fixture
def gateway(jp_serverapp, jp_asyncio_loop):
    """The running extension. Afterwards it is stopped here (before pytest-jupyter's own cleanup,
    which would run only after this check) and no sandbox process may survive it."""
    app = jp_serverapp.extension_manager.extension_apps["kernel_gateway_ext"]
    extension = next(iter(app))
    yield extension
    jp_asyncio_loop.run_until_complete(extension.stop_extension())
    left = wait_gone(extension.provider.root)
    assert not left, f"sandbox processes outlived the gateway: {describe(left)}"


async def wait_ready(fetch, timeout: float = 60.0) -> dict:
    """Wait until /health/ready says every pool has a ready sandbox."""
    deadline = time.monotonic() + timeout
    while True:
        response = await fetch("health", "ready", raise_error=False)
        body = json.loads(response.body)
        if response.code == 200:
            return body
        assert time.monotonic() < deadline, f"the gateway never became ready: {body}"
        await asyncio.sleep(0.05)


def body(response) -> dict:
    return json.loads(response.body)


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{pid}: {cmdline}")
        except OSError:
            out.append(f"{pid}: (gone)")
    return out


ROUTER = "/v1/namespaces/default/code-interpreters/default/invocations"


async def new_session(fetch) -> str:
    return body(await fetch("v1", "sessions", method="POST", body="{}"))["session_id"]


@pytest.fixture
def connect(jp_http_port):
    opened: list[Connection] = []

    async def open_one() -> Connection:
        opened.append(await Connection.open(jp_http_port))
        return opened[-1]
    yield open_one
    for connection in opened:
        connection.close()
