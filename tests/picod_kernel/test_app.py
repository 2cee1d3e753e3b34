"""The `picod` process: refusing bad configuration at startup with a clear message, `--help`,
serving on a Unix socket, and a clean SIGTERM shutdown that leaves no kernel behind."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time

import pytest

from tests.support.processes import python_argv


def start_fails(env_key: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PICOD_AUTH_PUBLIC_KEY"}
    if env_key is not None:
        env["PICOD_AUTH_PUBLIC_KEY"] = env_key
    return subprocess.run(python_argv("picod_kernel", "--port", "0", *args), env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("key", "wording"), [(None, "empty"), ("garbage", "not a PEM")])
def test_bad_key_refused_at_startup(key, wording):
    result = start_fails(key)
    assert result.returncode == 2 and wording in result.stderr and "PICOD_AUTH_PUBLIC_KEY" in result.stderr


def test_bad_flag_and_help(keys):
    assert start_fails(keys.public_pem, "--max-output", "0").returncode == 2
    assert start_fails(keys.public_pem, "--no-such-flag").returncode == 2
    help_text = subprocess.run(python_argv("picod_kernel", "--help"), capture_output=True, text=True).stdout
    for word in ("--port", "--workspace", "--unix-socket", "PICOD_AUTH_PUBLIC_KEY", "PICOD_SANDBOX_ID"):
        assert word in help_text


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("sandbox", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def health_over_unix_socket(path: str) -> dict | None:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    except OSError:
        return None
    finally:
        conn.close()


def test_unix_socket_and_clean_shutdown(keys, tmp_path):
    sock, runtime = str(tmp_path / "picod.sock"), tmp_path / "runtime"
    runtime.mkdir()
    env = {**os.environ, "PICOD_AUTH_PUBLIC_KEY": keys.public_pem, "TMPDIR": str(runtime)}
    proc = subprocess.Popen(python_argv("picod_kernel", "--unix-socket", sock, "--workspace", str(tmp_path / "ws")),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while (health := health_over_unix_socket(sock)) is None or health["kernel"] != "ready":
            assert time.monotonic() < deadline, "PicoD did not become ready on its Unix socket"
            time.sleep(0.1)
        assert os.stat(sock).st_mode & 0o777 == 0o600
        kernels = _children(proc.pid)
        assert kernels, "the kernel should be a child of PicoD"
        assert os.listdir(runtime), "the kernel's runtime directory should exist while it runs"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "shutting down" in stderr
    for pid in kernels:
        assert not os.path.exists(f"/proc/{pid}"), "the kernel outlived PicoD"
    assert os.listdir(runtime) == [], "the kernel's runtime directory was left behind"


def _maps_openssl(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return any("libcrypto" in line or "libssl" in line for line in f)


def test_the_daemon_runs_without_openssl_until_a_token_needs_it(fresh_picod):
    picod = fresh_picod()  # with its kernel: the bridge signs messages with the built-in SHA-256
    pid = picod.proc.pid
    assert picod.request("POST", "/api/run", json={"code": "6 * 7"}).json()["results"][0]["text/plain"] == "42"
    assert picod.request("POST", "/api/execute", json={"command": ["true"]}).status_code == 200
    assert not _maps_openssl(pid), "an idle PicoD should not have loaded OpenSSL"
    # A refused token is worded by PyJWT, which needs `ssl`: it is there when asked for.
    refused = picod.request("POST", "/api/execute", token="not.a.token", json={"command": ["true"]})
    assert refused.status_code == 401 and refused.json()["error"]
    assert picod.request("POST", "/api/execute", json={"command": ["true"]}).status_code == 200
