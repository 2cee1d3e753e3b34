"""Every notebook in examples/notebooks, executed by nbclient through KernelCube with
jupyter_server's `GatewayKernelManager`, as papermill runs notebooks: REST with the gateway
token, the header-less channels WebSocket through a channels capability (`ws_url`). Any error
output fails the test, and each notebook's point is checked in its outputs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
import requests
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelManager
from nbclient import NotebookClient

from tests.support.gateway import HEADERS, REPO, Gateway
from tests.support.redis import free_port

pytestmark = pytest.mark.slow
NOTEBOOKS = os.path.join(REPO, "examples", "notebooks")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    server = Gateway(str(tmp_path_factory.mktemp("state")), free_port(), pool_size=2)
    yield server
    assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def ws_url(gateway) -> str:
    minted = requests.post(f"{gateway.url}/api/capabilities/channels", json={"ttl": 600}, headers=HEADERS, timeout=30)
    assert minted.status_code == 201, minted.text
    return minted.json()["ws_url"]


@contextlib.contextmanager
def gateway_client(url: str, ws_url: str):
    """jupyter_server's gateway client configured as `JUPYTER_GATEWAY_*` variables would."""
    GatewayClient.clear_instance()
    GatewayClient.instance(url=url, ws_url=ws_url, auth_token=HEADERS["Authorization"].split()[1],
                           request_timeout=60.0)
    try:
        yield
    finally:
        GatewayClient.clear_instance()


def execute(gateway, ws_url: str, name: str, after=None) -> nbformat.NotebookNode:
    """Run a notebook on a new KernelCube kernel; `after(kernel_id)` runs before its shutdown."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)

    async def run() -> str:
        km = GatewayKernelManager()
        await km.start_kernel(kernel_name=nb.metadata.kernelspec.name)
        client = NotebookClient(nb, km=km, timeout=120)
        try:
            await client.async_execute()
            if after is not None:
                after(km.kernel_id)
        finally:
            if client.kc is not None:  # nbclient leaves the channels of a kernel it did not start
                client.kc.stop_channels()
            await km.shutdown_kernel()
        return km.kernel_id

    with gateway_client(gateway.url, ws_url):
        kernel_id = asyncio.run(run())
    gone = requests.get(f"{gateway.url}/api/kernels/{kernel_id}", headers=HEADERS, timeout=30)
    assert gone.status_code == 404, "the notebook's kernel outlived its shutdown"
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name}: error output {errors}"
    return nb


def outputs(nb, output_type: str) -> list:
    return [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == output_type]


def text(nb) -> str:
    return "".join(o.text for o in outputs(nb, "stream"))


def test_every_example_notebook_is_tested():
    assert sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")) == [
        "agent-session.ipynb", "data-walkthrough.ipynb", "long-running.ipynb"]


def test_data_walkthrough(gateway, ws_url):
    nb = execute(gateway, ws_url, "data-walkthrough.ipynb")
    assert "90 days" in text(nb)
    tables = [o for o in outputs(nb, "execute_result") if "text/html" in o.data]
    assert tables and "revenue" in tables[-1].data["text/html"]
    pngs = [o.data["image/png"] for o in outputs(nb, "display_data") if "image/png" in o.data]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_agent_session_file_is_read_back_through_the_files_api(gateway, ws_url):
    fetched = {}

    def read_report(kernel_id: str) -> None:
        response = requests.get(f"{gateway.url}/v1/sessions/{kernel_id}/files/report.json", headers=HEADERS,
                                timeout=30)
        assert response.status_code == 200, response.text
        fetched.update(json.loads(response.content))

    nb = execute(gateway, ws_url, "agent-session.ipynb", after=read_report)
    assert fetched["count"] == 46 and fetched["largest"] == 199 and len(fetched["notes"]) == 2
    assert '"count": 46' in text(nb)


def test_long_running_is_interrupted_and_keeps_its_state(gateway, ws_url):
    nb = execute(gateway, ws_url, "long-running.ipynb")
    assert "interrupted after" in text(nb) and "sum of the first" in text(nb) and "step 5/5 done" in text(nb)


def readme_python_block(containing: str) -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    return next(block for block in blocks if containing in block)


def test_papermill_and_nbclient_as_the_readme_shows(gateway, ws_url, tmp_path):
    """The README's Python example, as written, configured by environment variables only."""
    os.symlink(os.path.join(REPO, "examples"), tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_GATEWAY_", "KERNEL_"))}
    env.update(JUPYTER_GATEWAY_URL=gateway.url, JUPYTER_GATEWAY_WS_URL=ws_url,
               JUPYTER_GATEWAY_AUTH_TOKEN=HEADERS["Authorization"].split()[1])
    done = subprocess.run([sys.executable, "-c", readme_python_block("papermill.execute_notebook")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert '"limit": 100' in text(nb) and '"count": 25' in text(nb)
    assert requests.get(f"{gateway.url}/api/kernels", headers=HEADERS, timeout=30).json() == []
