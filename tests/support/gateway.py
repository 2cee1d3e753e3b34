"""The `kernelcube` command as a real process for tests, as users run it; stopped by the test."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from .processes import ServerProcess

TOKEN = "test-token-0123456789"
HEADERS = {"Authorization": f"token {TOKEN}"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANDBOX_PYTHON = os.path.join(REPO, ".sandbox-venv", "bin", "python")
URL_PATTERN = r"KernelCube gateway at http://(\S+):(\d+)"


def kernelcube_argv(*args: str) -> list[str]:
    """The installed `kernelcube` script next to this interpreter."""
    return [os.path.join(os.path.dirname(sys.executable), "kernelcube"), *args]


def run_kernelcube(*args: str, env: dict | None = None, cwd: str | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `kernelcube` to completion (help, version, refused configuration)."""
    return subprocess.run(kernelcube_argv(*args), env={**os.environ, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


class Gateway(ServerProcess):
    def __init__(self, state_dir: str, port: int, *, redis_url: str = "", pool_size: int = 1,
                 extra: tuple[str, ...] = (), env: dict | None = None, cwd: str | None = None,
                 ready_path: str = "/health/ready"):
        """`redis_url` empty: the in-memory store."""
        argv = kernelcube_argv("--ip", "127.0.0.1", "--port", str(port), "--token", TOKEN,
                               "--redis-url", redis_url, "--state-dir", state_dir,
                               "--sandbox-python", SANDBOX_PYTHON, "--pool-size", str(pool_size), *extra)
        self.cwd = cwd
        super().__init__(argv, {**os.environ, **(env or {})}, ready_path=ready_path,
                         url_pattern=URL_PATTERN, cwd=cwd)

    def execute(self, code: str, session_id: str | None = None) -> requests.Response:
        payload = {"code": code, **({"session_id": session_id} if session_id else {})}
        return requests.post(self.url + "/v1/execute", json=payload, headers=HEADERS, timeout=60)
