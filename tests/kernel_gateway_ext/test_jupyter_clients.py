"""A real jupyter_server in gateway mode (`--gateway-url`, as JupyterLab runs it) in front of a
real KernelCube gateway: kernelspecs come from the gateway, a kernel started through
jupyter_server is a KernelCube sandbox, and a notebook client's WebSocket to jupyter_server
runs code in it, is interrupted and restarted through it, and is shut down through it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import requests

from tests.support.channels import KernelChannels
from tests.support.gateway import TOKEN, Gateway
from tests.support.processes import ServerProcess
from tests.support.redis import free_port

pytestmark = pytest.mark.slow
LAB_TOKEN = "lab-token-0123456789"


class JupyterServer(ServerProcess):
    def __init__(self, gateway_url: str, root: str):
        argv = [os.path.join(os.path.dirname(sys.executable), "jupyter-server"), "--no-browser", "--allow-root",
                "--ip", "127.0.0.1", "--port", str(free_port()), f"--IdentityProvider.token={LAB_TOKEN}",
                f"--gateway-url={gateway_url}", f"--GatewayClient.auth_token={TOKEN}",
                f"--ServerApp.root_dir={root}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "KERNEL_"))}
        super().__init__(argv, {**env, "JUPYTER_CONFIG_DIR": os.path.join(root, ".config"),
                                "JUPYTER_DATA_DIR": os.path.join(root, ".data"),
                                "JUPYTER_RUNTIME_DIR": os.path.join(root, ".runtime")},
                         ready_path="/api", url_pattern=r"http://(127\.0\.0\.1):(\d+)/")

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"token {LAB_TOKEN}"},
                                timeout=60, **kwargs)


async def _notebook_session(lab: JupyterServer, kernel_id: str) -> None:
    """Code runs in the sandbox; an endless loop is interrupted and the variables stay; a
    restart keeps the kernel id and the WebSocket but clears the variables."""
    channels = await KernelChannels.open(f"{lab.url}/api/kernels/{kernel_id}/channels?session_id=lab-session",
                                          {"Authorization": f"token {LAB_TOKEN}"})
    try:
        assert await channels.run("import os; x = 6 * 7; (os.getuid(), x)") == "(1000, 42)"
        looping = channels.send("print('looping', flush=True)\nwhile True: pass")
        await channels.started(looping)
        interrupted = await asyncio.to_thread(lab.api, "POST", f"/api/kernels/{kernel_id}/interrupt")
        assert interrupted.status_code == 204, interrupted.text
        reply, _ = await channels.outcome(looping)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert await channels.run("x") == "42"
        restarted = await asyncio.to_thread(lab.api, "POST", f"/api/kernels/{kernel_id}/restart")
        assert restarted.status_code == 200 and restarted.json()["id"] == kernel_id, restarted.text
        assert await channels.run("'x' in globals()") == "False"
    finally:
        await channels.close()


def test_jupyter_server_in_gateway_mode_runs_code_in_a_kernelcube_sandbox(tmp_path):
    gateway = Gateway(str(tmp_path / "state"), free_port())
    lab = None
    try:
        lab = JupyterServer(gateway.url, str(tmp_path))
        # jupyter_server adopts the gateway's default kernel on its first fetch and reports it
        # from the next one on.
        lab.api("GET", "/api/kernelspecs")
        specs = lab.api("GET", "/api/kernelspecs").json()
        assert specs["default"] == "default" and "KernelCube" in specs["kernelspecs"]["default"]["spec"]["display_name"]
        started = lab.api("POST", "/api/kernels", json={"name": "default"})
        assert started.status_code == 201, started.text
        kernel_id = started.json()["id"]
        # jupyter_server's kernel is KernelCube's session, with the same id.
        assert requests.get(f"{gateway.url}/v1/sessions/{kernel_id}", timeout=30,
                            headers={"Authorization": f"token {TOKEN}"}).status_code == 200
        asyncio.run(_notebook_session(lab, kernel_id))
        assert lab.api("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
        assert requests.get(f"{gateway.url}/v1/sessions/{kernel_id}", timeout=30,
                            headers={"Authorization": f"token {TOKEN}"}).status_code == 404
    finally:
        if lab is not None:
            lab.stop()
        assert gateway.stop() == 0, gateway.log
