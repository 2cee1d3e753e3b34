"""Run an installed Dify plugin as Dify's plugin daemon runs a local plugin, and talk to it.

The daemon unpacks the `.difypkg`, installs its requirements and starts `python -m main` in the
unpacked directory; the plugin announces its configuration on stdout, then serves requests, one
JSON object per stdin line (`session_id`, `event: request`, `data`: the invocation), answering
with JSON messages on stdout (`event: session` carrying stream, end or error, plus heartbeats
and logs). This is that conversation, without the daemon (a Go program not available here).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
import zipfile


def unpack(package: str, directory: str) -> str:
    with zipfile.ZipFile(package) as archive:
        archive.extractall(directory)
    return directory


class DifyPluginProcess:
    def __init__(self, plugin_dir: str, env: dict[str, str] | None = None, timeout: float = 60):
        self.stderr_lines: list[str] = []
        # Only the plugin directory (cwd, first on sys.path with -m) provides `kernelcube`: the
        # package must carry what it imports.
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        self.proc = subprocess.Popen([sys.executable, "-m", "main"], cwd=plugin_dir,
                                     env={**clean, "INSTALL_METHOD": "local", **(env or {})},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.messages: queue.Queue[dict | None] = queue.Queue()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()
        first = self.messages.get(timeout=timeout)
        if first is None:
            raise RuntimeError(f"the plugin exited before declaring itself:\n{self.stderr}")
        self.configuration = first  # the manifest, as the plugin read and validated it

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                self.messages.put(json.loads(line))
        self.messages.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def request(self, data: dict, timeout: float = 120) -> list[dict]:
        """Send one request; the `data` of its stream messages, in order, until its end. A
        plugin-side error raises RuntimeError with the plugin's message."""
        session_id = uuid.uuid4().hex
        line = json.dumps({"session_id": session_id, "event": "request", "data": data}) + "\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        stream = []
        while True:
            message = self.messages.get(timeout=timeout)
            if message is None:
                raise RuntimeError(f"the plugin exited:\n{self.stderr}")
            if message.get("session_id") != session_id or message.get("event") != "session":
                continue  # heartbeats, logs, other sessions
            body = message["data"]
            if body["type"] == "stream":
                stream.append(body["data"])
            elif body["type"] == "end":
                return stream
            elif body["type"] == "error":
                raise RuntimeError(json.dumps(body["data"]))

    def invoke_tool(self, provider: str, tool: str, credentials: dict, parameters: dict) -> list[dict]:
        return self.request({"type": "tool", "action": "invoke_tool", "user_id": "test-user", "provider": provider,
                             "tool": tool, "credentials": credentials, "tool_parameters": parameters})

    def validate_credentials(self, provider: str, credentials: dict) -> list[dict]:
        return self.request({"type": "tool", "action": "validate_tool_credentials", "user_id": "test-user",
                             "provider": provider, "credentials": credentials})

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode
