"""The `kernelcube-mcp` server, spawned over stdio by the MCP SDK's own client as an MCP host
would, against a real gateway: its six tools; Python state kept between calls; a plot returned as
MCP image content; files and commands; a session reaped behind its back replaced once, with a
note; stop_session; the session ended when the host closes the server. And once over streamable
HTTP."""

from __future__ import annotations

import base64
import os
import signal
import sys

import pytest
import requests
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.support.client_gateway import HEADERS, TOKEN, sessions_on
from tests.support.gateway import REPO
from tests.support.processes import ServerProcess
from tests.support.redis import free_port

pytestmark = pytest.mark.asyncio
TOOLS = ["run_code", "execute_command", "write_file", "read_file", "list_files", "stop_session"]


def server_env(gateway) -> dict[str, str]:
    return {"KERNELCUBE_URL": gateway.url, "KERNELCUBE_TOKEN": TOKEN, "PYTHONPATH": REPO}


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


@pytest.fixture
def errlog(tmp_path):
    """Where the server's stderr goes (a real file: the child needs a descriptor)."""
    with open(tmp_path / "server.log", "w+") as log:
        yield log


def end_session(gateway, session_id: str) -> int:
    return requests.delete(f"{gateway.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=30).status_code


async def test_the_mcp_server_over_stdio(gateway, tmp_path, errlog):
    params = StdioServerParameters(command=sys.executable, args=["-m", "kernelcube.mcp_server"],
                                   env=server_env(gateway), cwd=str(tmp_path))
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as mcp:
        await mcp.initialize()
        assert [tool.name for tool in (await mcp.list_tools()).tools] == TOOLS
        before = set(sessions_on(gateway))

        plotted = await mcp.call_tool("run_code", {"code": "import matplotlib.pyplot as plt\nn = 12\n"
                                                            "plt.plot(range(n)); plt.show()\nn * 2"})
        [text, image] = plotted.content
        assert text.type == "text" and text.text.startswith("24")
        assert image.type == "image" and image.mime_type == "image/png"
        assert base64.b64decode(image.data).startswith(b"\x89PNG\r\n\x1a\n")
        [session_id] = set(sessions_on(gateway)) - before

        assert text_of(await mcp.call_tool("run_code", {"code": "n + 1"})) == "13"
        assert text_of(await mcp.call_tool("run_code", {"code": "echo $((n+1))", "language": "bash"})) == "1"
        failed = text_of(await mcp.call_tool("run_code", {"code": "1/0"}))
        assert failed.startswith("ZeroDivisionError: division by zero")
        timed_out = text_of(await mcp.call_tool("run_code", {"code": "import time; time.sleep(10)",
                                                             "timeout_seconds": 1}))
        assert "exceeded its 1 s timeout" in timed_out

        assert text_of(await mcp.call_tool("write_file", {"path": "out/notes.md", "content": "# hi\n"})) == \
            "wrote 5 bytes to out/notes.md"
        assert text_of(await mcp.call_tool("read_file", {"path": "out/notes.md"})) == "# hi\n"
        # (the kernel writes next to the files API's directory, not into it: see the report on
        # directory permissions)
        await mcp.call_tool("run_code", {"code": "plt.plot([1, 2]); plt.savefig('fig.png')"})
        [figure] = (await mcp.call_tool("read_file", {"path": "fig.png"})).content
        assert figure.type == "image" and base64.b64decode(figure.data)[:4] == b"\x89PNG"
        listing = text_of(await mcp.call_tool("list_files", {"path": "."})).splitlines()
        assert "out/\t" in "\n".join(listing) and any(line.startswith("fig.png\t") for line in listing)
        assert text_of(await mcp.call_tool("list_files", {"path": "out"})) == "notes.md\t5 bytes"
        assert text_of(await mcp.call_tool("execute_command", {"command": "ls out | wc -l"})).strip() == "1"
        failing = text_of(await mcp.call_tool("execute_command", {"command": "cat nothing-here"}))
        assert "exit code 1" in failing and "No such file" in failing
        missing = await mcp.call_tool("read_file", {"path": "nothing-here"})
        assert text_of(missing).startswith("KernelCube error: ")

        # Reaped behind the server's back: the next call runs in a new session, once, and says so.
        assert end_session(gateway, session_id) == 204
        recovered = text_of(await mcp.call_tool("run_code", {"code": "'n' in globals()"}))
        assert recovered.startswith(f"[session {session_id} had ended") and recovered.endswith("False")
        [second] = set(sessions_on(gateway)) - before
        assert second != session_id

        stopped = text_of(await mcp.call_tool("stop_session", {}))
        assert stopped == f"session {second} ended; the next call starts a new one"
        assert set(sessions_on(gateway)) == before
        assert text_of(await mcp.call_tool("stop_session", {})) == "no session was running"
        assert text_of(await mcp.call_tool("run_code", {"code": "'again'"})) == "'again'"
        assert len(set(sessions_on(gateway)) - before) == 1
    # The host closed the server: its session was ended on the way out.
    errlog.seek(0)
    assert set(sessions_on(gateway)) == before, errlog.read()


async def test_the_mcp_server_over_streamable_http(gateway, tmp_path):
    server = ServerProcess([sys.executable, "-m", "kernelcube.mcp_server", "--transport", "streamable-http",
                            "--port", str(free_port())], {**os.environ, **server_env(gateway)},
                           ready_path="/mcp", ready_status=(400, 405, 406),
                           url_pattern=r"Uvicorn running on http://(\S+):(\d+)", cwd=str(tmp_path))
    try:
        async with streamable_http_client(f"{server.url}/mcp") as (read, write), ClientSession(read, write) as mcp:
            await mcp.initialize()
            assert text_of(await mcp.call_tool("run_code", {"code": "import sys\nsys.version_info[0]"})) == "3"
            assert text_of(await mcp.call_tool("stop_session", {})).endswith("the next call starts a new one")
    finally:
        # uvicorn shuts down gracefully on SIGTERM, then exits by the signal it caught
        assert server.stop() in (0, -signal.SIGTERM), server.log
    assert "Application shutdown complete" in server.log
