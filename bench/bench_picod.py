"""PicoD: `/api/run` of `1+1` against a direct jupyter_client round trip to an ipykernel,
and `/api/execute` of `true` against a bare subprocess spawn, measured in the same run."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jupyter_client.manager import AsyncKernelManager

from bench.stats import report, timed
from tests.support.processes import ServerProcess, python_argv

N = 200


def _keys() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


class Client:
    """A keep-alive HTTP/1.1 client with TCP_NODELAY, the cheapest honest client."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), self.headers)
        response = self.conn.getresponse()
        data = json.loads(response.read())
        assert response.status == 200, data
        return data


def _direct_kernel_samples() -> list[float]:
    """The baseline: jupyter_client to a local ipykernel, execute_request to idle."""

    async def measure() -> list[float]:
        km = AsyncKernelManager(transport="ipc")
        km.ip = os.path.join(tempfile.mkdtemp(prefix="bench-kernel-"), "ipc")
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        samples = []
        try:
            for i in range(N + 5):
                started = time.perf_counter()
                reply = await client.execute_interactive("1+1", output_hook=lambda msg: None, timeout=30)
                assert reply["content"]["status"] == "ok"
                if i >= 5:
                    samples.append((time.perf_counter() - started) * 1000)
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)
        return samples

    result: list[float] = []
    # In a thread of its own so that its event loop does not interfere with anything else.
    thread = threading.Thread(target=lambda: result.extend(asyncio.run(measure())))
    thread.start()
    thread.join()
    return result


def run() -> None:
    key, public = _keys()
    with tempfile.TemporaryDirectory() as workspace:
        picod = ServerProcess(python_argv("picod_kernel", "--host", "127.0.0.1", "--port", "0",
                                          "--workspace", workspace),
                              {**os.environ, "PICOD_AUTH_PUBLIC_KEY": public})
        port = int(picod.url.rsplit(":", 1)[1])
        try:
            token = jwt.encode({"exp": int(time.time()) + 3600, "iat": int(time.time())}, key, algorithm="RS256")
            client = Client(port, token)
            direct = _direct_kernel_samples()
            via_picod = timed(lambda: client.post("/api/run", {"code": "1+1"}), N)
            report("direct jupyter_client 1+1 (baseline)", direct)
            report("PicoD /api/run 1+1", via_picod, direct, goal=1.3)
            spawn = timed(lambda: subprocess.run(["true"], check=True), N)
            execute = timed(lambda: client.post("/api/execute", {"command": ["true"]}), N)
            report("bare subprocess spawn of true (baseline)", spawn)
            report("PicoD /api/execute true", execute, spawn)
        finally:
            picod.stop()
