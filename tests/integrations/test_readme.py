"""The README's examples for the client and each integration, run as written (copied out of
README.md) against a real gateway, configured only by KERNELCUBE_URL and KERNELCUBE_TOKEN; and
the client's public methods are all documented there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from kernelcube import AsyncCodeInterpreterClient, CodeInterpreterClient
from tests.support.client_gateway import TOKEN, sessions_on
from tests.support.gateway import REPO


def section(heading: str) -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def blocks(heading: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(heading), re.S)


def run(code: str, gateway, cwd, *, argv0: tuple[str, ...] = (sys.executable, "-c"), env: dict | None = None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KERNELCUBE_")}
    environment.update({"KERNELCUBE_URL": gateway.url, "KERNELCUBE_TOKEN": TOKEN, "PYTHONPATH": REPO,
                        "TMPDIR": str(cwd), **(env or {})})  # images the examples save stay in the test's dir
    done = subprocess.run([*argv0, code], env=environment, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_the_client_example(gateway, tmp_path):
    [example] = blocks("The Python client", "python")
    out = run(example, gateway, tmp_path)
    assert out.splitlines()[:4] == ["45", "0", "1", "2"]
    assert "ZeroDivisionError: division by zero" in out and "2 data.csv" in out
    assert "'data.csv'" in out and "exceeded its 2 s timeout" in out
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert sessions_on(gateway) == []


def test_the_agentcube_sdk_example_runs_with_the_import_changed(gateway, tmp_path):
    [example] = blocks("The AgentCube API (agentcube-sdk, Dify, MCP)", "python")
    switched = (example.replace("from agentcube import", "from kernelcube import")
                .replace("http://127.0.0.1:8888", gateway.url).replace("<token>", TOKEN))
    assert switched.count("kernelcube") == 1 and TOKEN in switched
    # Configured as the agentcube-sdk is, by ROUTER_URL (the example sets it) and the token argument.
    out = run(switched, gateway, tmp_path, env={"KERNELCUBE_URL": "", "KERNELCUBE_TOKEN": ""}).splitlines()
    assert out[0].startswith("Linux ") and out[-1] == "42"
    assert sessions_on(gateway) == []


def test_every_public_client_method_is_documented():
    documented = section("The Python client")
    for cls in (CodeInterpreterClient, AsyncCodeInterpreterClient):
        for name in dir(cls):
            if not name.startswith("_") and callable(getattr(cls, name)):
                assert f"{name}(" in documented or f"`{name}`" in documented, name


def test_the_langchain_example(gateway, tmp_path):
    [example] = blocks("LangChain and LangGraph", "python")
    out = run(example, gateway, tmp_path).splitlines()
    assert out[0] == "10" and out[1].startswith("[image saved to ")
    assert sessions_on(gateway) == []


def test_the_mcp_example_and_host_configuration(gateway, tmp_path):
    [host] = blocks("MCP server", "json")
    server = json.loads(host)["mcpServers"]["kernelcube"]
    assert server["command"] == "kernelcube-mcp" and set(server["env"]) == {"KERNELCUBE_URL", "KERNELCUBE_TOKEN"}
    with open(os.path.join(REPO, "setup.cfg")) as f:
        assert "kernelcube-mcp = kernelcube.mcp_server:main" in f.read()
    installed = os.path.join(os.path.dirname(sys.executable), "kernelcube-mcp")
    assert os.access(installed, os.X_OK), "kernelcube-mcp is not installed: run `make install`"
    [example] = blocks("MCP server", "python")
    out = run(example, gateway, tmp_path, env={"PATH": f"{os.path.dirname(installed)}:{os.environ['PATH']}"})
    assert out.strip() == "5050"
    assert sessions_on(gateway) == []


def test_the_dify_build_command(gateway, tmp_path):
    [command] = blocks("Dify plugin", "bash")
    for name in ("integrations", "kernelcube"):  # a checkout, as the command expects to run in
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    run(command, gateway, tmp_path, argv0=("bash", "-c"),
        env={"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    package = tmp_path / "build" / "dify" / "kernelcube-0.1.0.difypkg"
    with zipfile.ZipFile(package) as archive:
        assert "manifest.yaml" in archive.namelist() and "kernelcube/client.py" in archive.namelist()


@pytest.mark.parametrize("heading", ["The Python client", "LangChain and LangGraph", "MCP server", "Dify plugin"])
def test_each_integration_section_has_a_tested_example(heading):
    assert blocks(heading, "python") or blocks(heading, "bash")
