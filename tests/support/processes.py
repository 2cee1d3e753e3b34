"""Start and stop real server processes for tests; every process started here is stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import requests


class ServerProcess:
    """A child process that logs where it listens (`listening on HOST:PORT` unless told another
    pattern with HOST and PORT groups); its output is kept for assertions."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_path: str = "/health",
                 ready_status: tuple[int, ...] = (200,), timeout: float = 60.0,
                 url_pattern: str = r"listening on (\S+):(\d+)", cwd: str | None = None,
                 pass_fds: tuple[int, ...] = ()):
        self.url_pattern = re.compile(url_pattern)
        self.argv, self.env = argv, env
        self.output: list[str] = []
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, cwd=cwd, pass_fds=pass_fds)
        self._port_found = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_ready(ready_path, ready_status, timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            match = self.url_pattern.search(line)
            if match and not self.url:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                self._port_found.set()

    def _wait_ready(self, path: str, statuses: tuple[int, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self._port_found.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.argv[:3]} did not start:\n{self.log}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:3]} exited with {self.proc.returncode}:\n{self.log}")
            try:
                if requests.get(self.url + path, timeout=2).status_code in statuses:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[:3]} was not ready within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.output)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL the whole process group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.proc.returncode


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
