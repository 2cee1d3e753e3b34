"""Fixtures: a real PicoD process on loopback with a fresh key pair and workspace."""

from __future__ import annotations

import os

import pytest
import requests

from tests.support.keys import KeyPair
from tests.support.processes import ServerProcess, python_argv


@pytest.fixture(scope="session")
def keys() -> KeyPair:
    return KeyPair()


class Picod(ServerProcess):
    def __init__(self, keys: KeyPair, workspace: str, *args: str, env: dict | None = None,
                 pass_fds: tuple[int, ...] = ()):
        self.keys = keys
        self.workspace = os.path.realpath(workspace)
        self.session_id: str | None = None
        full_env = {**os.environ, "PICOD_AUTH_PUBLIC_KEY": keys.public_pem, **(env or {})}
        self.sandbox_id = full_env.get("PICOD_SANDBOX_ID")
        super().__init__(python_argv("picod_kernel", "--host", "127.0.0.1", "--port", "0",
                                     "--workspace", workspace, *args), full_env,
                         ready_status=(200, 503) if "--kernel-python" in args else (200,), pass_fds=pass_fds)

    def token(self, **claims) -> str:
        claims.setdefault("sandbox", self.sandbox_id)
        claims.setdefault("session_id", self.session_id)
        return self.keys.token(**claims)

    def request(self, method: str, path: str, token: str | None = None, auth: bool = True,
                **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if auth:
            headers.setdefault("Authorization", f"Bearer {token or self.token()}")
        kwargs.setdefault("timeout", 60)
        return requests.request(method, self.url + path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def picod(keys, tmp_path_factory):
    """One daemon (with its kernel) shared by a test module."""
    server = Picod(keys, str(tmp_path_factory.mktemp("workspace")))
    yield server
    server.stop()


@pytest.fixture
def fresh_picod(keys, tmp_path):
    """A daemon of one's own, for tests that change its state (session lock, kernel death)."""
    servers: list[Picod] = []

    def start(*args: str, env: dict | None = None, pass_fds: tuple[int, ...] = ()) -> Picod:
        server = Picod(keys, str(tmp_path / f"ws{len(servers)}"), *args, env=env, pass_fds=pass_fds)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
