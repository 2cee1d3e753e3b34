"""The Jupyter kernel face, measured in one run on this machine, each figure next to its baseline:

- `1+1` round trip (execute_request to iopub idle) over `/api/kernels/{id}/channels`, rounds
  interleaved with the same through jupyter_client straight to a local ipykernel;
- kernel start from a warm pool (POST /api/kernels, open the channels, kernel_info_reply) against
  the stock Jupyter Kernel Gateway's cold start (`make install-bench` installs it);
- a 20-cell notebook through nbclient and `GatewayKernelManager` against nbclient with a local
  ipykernel, start and shutdown included.

The KernelCube gateway runs as deployed, with a token; nbclient's header-less gateway WebSocket
gets a channels capability in its `ws_url`, as the README tells users.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from unittest import mock

import nbformat
from jupyter_client.jsonutil import json_default
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import Session
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelManager
from nbclient import NotebookClient
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect
from traitlets.config import Config

from bench.bench_gateway import HEADERS, TOKEN, Client, start_gateway, wait_pool
from bench.stats import report
from tests.support.processes import ServerProcess
from tests.support.redis import free_port

POOL = 2
WARMUP, ROUNDS = 5, 200
STARTS = 15
NOTEBOOK_RUNS = 3
CELLS = [f"x = {i} ** 2\nprint(x)\nx + 1" for i in range(20)]
EXECUTE = {"code": "1+1", "silent": False, "store_history": True, "user_expressions": {},
           "allow_stdin": False, "stop_on_error": True}
SESSION = Session(username="bench")
AUTH = {"Authorization": HEADERS["Authorization"]}


def is_reply(msg: dict, msg_id: str, msg_type: str) -> bool:
    """`status` means the iopub idle that ends a request."""
    if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != msg_type:
        return False
    return msg_type != "status" or msg["content"]["execution_state"] == "idle"


async def request(conn: WebSocketClientConnection, msg_type: str, content: dict, until: str) -> dict:
    """Send a shell request in the legacy JSON framing; the first `until` message answering it."""
    msg = SESSION.msg(msg_type, content)
    await conn.write_message(json.dumps({**msg, "channel": "shell"}, default=json_default))
    while True:
        raw = await conn.read_message()
        if raw is None:
            raise RuntimeError(f"the channels socket closed before the {until} of a {msg_type}")
        reply = json.loads(raw)
        if is_reply(reply, msg["header"]["msg_id"], until):
            return reply


async def open_channels(url: str, kernel_id: str) -> WebSocketClientConnection:
    conn = await websocket_connect(HTTPRequest(f"ws{url.removeprefix('http')}/api/kernels/{kernel_id}/channels",
                                               headers=AUTH))
    conn.protocol.set_nodelay(True)  # type: ignore[union-attr]  # else Nagle, not the server, sets the pace
    return conn


async def start_kernel(url: str, name: str) -> tuple[str, WebSocketClientConnection]:
    """POST /api/kernels, open its channels, and wait for its kernel_info_reply there."""
    response = await AsyncHTTPClient().fetch(f"{url}/api/kernels", method="POST", body=json.dumps({"name": name}),
                                             headers=AUTH)
    kernel_id = json.loads(response.body)["id"]
    conn = await open_channels(url, kernel_id)
    await request(conn, "kernel_info_request", {}, until="kernel_info_reply")
    return kernel_id, conn


async def delete_kernel(url: str, kernel_id: str, conn: WebSocketClientConnection) -> None:
    conn.close()
    await AsyncHTTPClient().fetch(f"{url}/api/kernels/{kernel_id}", method="DELETE", headers=AUTH)


def ipc_config(directory: str) -> Config:
    """Local kernels on ipc sockets in `directory`: the quickest transport, and no warning about
    unencrypted TCP."""
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(directory, "ipc")}})


@contextlib.asynccontextmanager
async def local_kernel():
    """A jupyter_client connection to a local ipykernel, shut down on leaving."""
    with tempfile.TemporaryDirectory(prefix="kcb-kernel-") as tmp:
        km = AsyncKernelManager(config=ipc_config(tmp))
        await km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            yield kc
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)


async def round_trips(url: str) -> tuple[list[float], list[float]]:
    """Milliseconds from execute_request to its iopub idle, KernelCube and direct in turn."""
    kernel_id, conn = await start_kernel(url, "default")
    try:
        async with local_kernel() as kc:
            via_gateway, direct = [], []
            for i in range(WARMUP + ROUNDS):
                started = time.perf_counter()
                await request(conn, "execute_request", EXECUTE, until="status")
                gateway_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                msg_id = kc.execute(**EXECUTE)
                while not is_reply(await kc.get_iopub_msg(timeout=30), msg_id, "status"):
                    pass
                direct_ms = (time.perf_counter() - started) * 1000
                await kc.get_shell_msg(timeout=30)  # its execute_reply, left out of the time
                if i >= WARMUP:
                    via_gateway.append(gateway_ms)
                    direct.append(direct_ms)
    finally:
        await delete_kernel(url, kernel_id, conn)
    return via_gateway, direct


async def kernel_starts(url: str, name: str, before: Callable[[], object] = lambda: None) -> list[float]:
    """Milliseconds from POST /api/kernels to kernel_info_reply on the channels, STARTS times;
    `before` runs (in a thread) ahead of each start, untimed."""
    samples = []
    for _ in range(STARTS):
        await asyncio.to_thread(before)
        started = time.perf_counter()
        kernel_id, conn = await start_kernel(url, name)
        samples.append((time.perf_counter() - started) * 1000)
        await delete_kernel(url, kernel_id, conn)
    return samples


def stock_gateway_starts() -> list[float] | str:
    """Cold starts on the stock Jupyter Kernel Gateway, or why they were skipped."""
    if importlib.util.find_spec("kernel_gateway") is None:
        return "skipped: jupyter_kernel_gateway is not installed (`make install-bench`)"
    with tempfile.TemporaryDirectory(prefix="kcb-kg-") as tmp:
        argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={free_port()}"]
        kg = ServerProcess(argv, {**os.environ, "JUPYTER_RUNTIME_DIR": tmp}, ready_path="/api/kernelspecs",
                           url_pattern=r"is available at http://(\S+):(\d+)", cwd=tmp)
        try:
            return asyncio.run(kernel_starts(kg.url, "python3"))
        finally:
            kg.stop()


def notebook_seconds(client_args: dict, start_args: dict) -> float:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in CELLS])
    started = time.perf_counter()
    NotebookClient(nb, timeout=60, **client_args).execute(**start_args)
    elapsed = time.perf_counter() - started
    assert nb.cells[-1].outputs[0]["text"] == f"{19 ** 2}\n", nb.cells[-1].outputs
    return elapsed


def via_kernelcube(url: str, ws_url: str) -> float:
    """nbclient on GatewayKernelManager, configured as a user would (GatewayClient's singleton)."""
    with mock.patch.dict(os.environ):  # the gateway client writes KERNEL_LAUNCH_TIMEOUT there
        GatewayClient.instance(url=url, ws_url=ws_url, auth_token=TOKEN)
        try:
            return notebook_seconds({"kernel_manager_class": GatewayKernelManager}, {})
        finally:
            GatewayClient.clear_instance()


def notebooks(url: str, ws_url: str, pool_ready: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Seconds per notebook, KernelCube and local in turn, each on an idle machine with a full pool."""
    via_gateway, local = [], []
    for _ in range(NOTEBOOK_RUNS):
        pool_ready()
        via_gateway.append(via_kernelcube(url, ws_url))
        pool_ready()
        with tempfile.TemporaryDirectory(prefix="kcb-kernel-") as tmp:
            local.append(notebook_seconds({"kernel_name": "python3", "config": ipc_config(tmp)}, {}))
    return via_gateway, local


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="kcb-") as state_dir, contextlib.ExitStack() as stack:
        gateway = start_gateway(state_dir, pool_size=POOL)
        stack.callback(gateway.stop)
        client = Client(gateway.url)

        def pool_ready() -> None:
            wait_pool(client, POOL)

        pool_ready()
        print(f"  -- {ROUNDS} `1+1` round trips, execute_request to iopub idle", flush=True)
        via_gateway, direct = asyncio.run(round_trips(gateway.url))
        report("direct jupyter_client 1+1 (baseline)", direct)
        report("KernelCube channels 1+1 (goal p50<=10)", via_gateway, direct, goal=1.5)

        print(f"  -- {STARTS} kernel starts, POST /api/kernels to kernel_info_reply", flush=True)
        warm = asyncio.run(kernel_starts(gateway.url, "default", before=pool_ready))
        cold = stock_gateway_starts()
        if isinstance(cold, str):
            print(f"  stock Kernel Gateway cold start (baseline): {cold}", flush=True)
            report("KernelCube warm-pool start (goal p95<300)", warm, quantiles=(95,))
        else:
            report("stock Kernel Gateway cold start (baseline)", cold, quantiles=(95,))
            report("KernelCube warm-pool start (goal p95<300)", warm, cold, quantiles=(95,))

        print(f"  -- a {len(CELLS)}-cell notebook through nbclient, {NOTEBOOK_RUNS} runs each", flush=True)
        ws_url = client.call("POST", "/api/capabilities/channels", {"ttl": 600})["ws_url"]
        gateway_s, local_s = notebooks(gateway.url, ws_url, pool_ready)
        for label, runs in (("nbclient, local ipykernel (baseline)", local_s),
                            ("nbclient, KernelCube GatewayKernelManager", gateway_s)):
            print(f"  {label:<44} median {statistics.median(runs):6.2f} s  "
                  f"(runs: {', '.join(f'{s:.2f}' for s in runs)})", flush=True)
        print(f"  {'':<44} ratio {statistics.median(gateway_s) / statistics.median(local_s):.2f}x", flush=True)
