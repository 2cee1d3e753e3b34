"""The README's agent-runtime example, as written: the example agent (`examples/agent`) is
installed with pip into a sandbox Python and started by the gateway through a template whose
command is `python3 -m my_agent`; the unmodified agentcube-sdk's AgentRuntimeClient talks to it
through the Router, and its conversation is the session's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO, SANDBOX_PYTHON, TOKEN, body, wait_ready

pytestmark = pytest.mark.slow
EXAMPLE = os.path.join(REPO, "examples", "agent")
INVOCATIONS = ("v1", "namespaces", "default", "agent-runtimes", "agent", "invocations")


@pytest.fixture
def agent_python(tmp_path) -> str:
    """A Python like the sandbox's with the example installed by pip (not into the shared
    .sandbox-venv, which other tests use)."""
    venv = tmp_path / "agent-venv"
    subprocess.run([SANDBOX_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    source = tmp_path / "agent"  # a copy: building writes next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-build-isolation", "--target", site, str(source)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    return python


@pytest.fixture
def agent_template(gateway_config, agent_python):
    # The README's template, with the Python the example was installed into.
    gateway_config["templates"] = {"agent": {"kind": "agent-runtime", "command": ["python3", "-m", "my_agent"],
                                             "pool_size": 1, "python": agent_python}}


@pytest.fixture
def base_url(jp_serverapp, jp_http_port) -> str:
    return f"http://localhost:{jp_http_port}"


def converse(base_url: str, session_id: str) -> list:
    from agentcube import AgentRuntimeClient

    with AgentRuntimeClient("agent", router_url=base_url, session_id=session_id) as client:
        return [client.invoke({"prompt": "hello"}), client.invoke({"prompt": "again"})]


async def test_the_example_agent_through_its_template(agent_template, jp_fetch, gateway, base_url):
    await wait_ready(jp_fetch)
    created = body(await jp_fetch("v1", "agent-runtime", method="POST",
                                  body=json.dumps({"name": "agent", "namespace": "default"})))
    replies = await asyncio.to_thread(converse, base_url, created["sessionId"])
    assert replies == [{"reply": "you said 'hello'", "turn": 1},
                       {"reply": "you said 'again' (earlier you said 'hello')", "turn": 2}]

    # The README's curl: a GET without a session id starts one (with the gateway token).
    first = await jp_fetch(*INVOCATIONS, "")
    assert body(first) == {"agent": "my_agent", "turns": 0}
    session_id = first.headers["x-agentcube-session-id"]
    assert session_id != created["sessionId"]
    refused = await jp_fetch(*INVOCATIONS, "", method="POST", body="{}", raise_error=False,
                             headers={"x-agentcube-session-id": session_id, "Authorization": ""})
    assert refused.code == 400 and "prompt" in body(refused)["error"]
    for sid in (session_id, created["sessionId"]):
        await jp_fetch("v1", "agent-runtime", "sessions", sid, method="DELETE",
                       headers={"Authorization": f"token {TOKEN}"})
