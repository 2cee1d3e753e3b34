"""The Dify plugin as Dify installs and runs it: `integrations/dify/build.py` makes the
`.difypkg`, which is unpacked and started as the plugin daemon starts a local plugin (`python -m
main`, the dify-plugin SDK reading requests on stdin; see dify_runtime.py); then its credential
validation and its tool are invoked against a real gateway: command and code with an image,
session reuse across invocations, and each failure in AgentCube's error shape."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.integrations.dify_runtime import DifyPluginProcess, unpack
from tests.support.client_gateway import TOKEN, sessions_on
from tests.support.gateway import REPO
from tests.support.redis import free_port

TOOL = "kernelcube-code-interpreter"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("dist") / "kernelcube.difypkg")
    done = subprocess.run([sys.executable, os.path.join(REPO, "integrations", "dify", "build.py"), "-o", output],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == output
    return output


@pytest.fixture(scope="module")
def plugin(package, tmp_path_factory):
    process = DifyPluginProcess(unpack(package, str(tmp_path_factory.mktemp("installed"))))
    yield process
    process.stop()


@pytest.fixture
def credentials(gateway) -> dict:
    return {"kernelcube_url": gateway.url, "kernelcube_token": TOKEN}


def json_messages(stream: list[dict]) -> list[dict]:
    return [m["message"]["json_object"] for m in stream if m["type"] == "json"]


def blobs(stream: list[dict]) -> list[tuple[dict, bytes]]:
    """(meta, content) of each file the tool sent, from its chunks."""
    files, parts = [], {}
    for message in stream:
        if message["type"] != "blob_chunk":
            continue
        chunk = message["message"]
        parts.setdefault(chunk["id"], []).append(base64.b64decode(chunk["blob"]))
        if chunk["end"]:
            files.append((message["meta"], b"".join(parts.pop(chunk["id"]))))
    return files


def test_the_package_holds_what_dify_installs(package, plugin):
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"manifest.yaml", "main.py", "requirements.txt", "_assets/icon.svg", "provider/kernelcube.yaml",
            "provider/kernelcube.py", "tools/code_interpreter.yaml", "tools/code_interpreter.py",
            "kernelcube/__init__.py", "kernelcube/client.py", "PRIVACY.md"} <= names
    assert not {"build.py", "README.md", "kernelcube/langchain.py", "kernelcube/mcp_server.py"} & names
    # The SDK read and validated the manifest before announcing it.
    assert plugin.configuration["name"] == "kernelcube" and plugin.configuration["plugins"]["tools"] == [
        "provider/kernelcube.yaml"]
    assert plugin.configuration["meta"]["runner"] == {"language": "python", "version": "3.12", "entrypoint": "main"}


def test_credentials_are_validated_against_the_gateway(plugin, credentials):
    assert plugin.validate_credentials("kernelcube", credentials) == [{"result": True}]
    with pytest.raises(RuntimeError) as refused:
        plugin.validate_credentials("kernelcube", {**credentials, "kernelcube_token": "wrong"})
    assert "ToolProviderCredentialValidationError" in str(refused.value)
    assert "a valid gateway token is required" in str(refused.value)
    with pytest.raises(RuntimeError, match="cannot reach the gateway"):
        plugin.validate_credentials("kernelcube", {"kernelcube_url": f"http://127.0.0.1:{free_port()}"})


def test_a_command_then_code_with_an_image(plugin, credentials, gateway):
    before = set(sessions_on(gateway))
    stream = plugin.invoke_tool("kernelcube", TOOL, credentials, {
        "command": "echo from-the-shell > shell.txt && cat shell.txt",
        "code": "import matplotlib.pyplot as plt\nprint(open('shell.txt').read().strip())\n"
                "plt.plot([3, 1, 2]); plt.show()\n2 ** 8",
        "language": "python"})
    [answer] = json_messages(stream)
    assert answer["status"] == "success" and answer["session_id"] is None
    assert answer["code_interpreter_id"] == "default"
    command, code = answer["results"]
    assert command == {"type": "command", "result": "from-the-shell\n", "stderr": "", "exit_code": 0}
    assert code["type"] == "code" and code["result"].startswith("from-the-shell\n256")
    assert code["stdout"] == "from-the-shell\n" and code["images"] == 1 and code["error"] is None
    [(meta, png)] = blobs(stream)
    assert meta == {"mime_type": "image/png", "filename": "output-1.png"} and png.startswith(b"\x89PNG")
    assert set(sessions_on(gateway)) == before  # no session_reuse: the session ended


def test_session_reuse_keeps_the_kernel_between_invocations(plugin, credentials, gateway):
    [first] = json_messages(plugin.invoke_tool("kernelcube", TOOL, credentials, {
        "code": "memory = ['kept']", "session_reuse": True, "code_interpreter_id": "alt"}))
    assert first["status"] == "success" and first["code_interpreter_id"] == "alt"
    session_id = first["session_id"]
    assert session_id in sessions_on(gateway)
    [second] = json_messages(plugin.invoke_tool("kernelcube", TOOL, credentials, {
        "code": "memory[0]", "session_id": session_id, "session_reuse": False}))
    assert second["status"] == "success" and second["results"][0]["result"] == "'kept'"
    assert second["session_id"] is None and session_id not in sessions_on(gateway)


def test_failures_in_agentcubes_error_shape(plugin, credentials, gateway):
    def invoke(parameters: dict, creds: dict = credentials) -> dict:
        [answer] = json_messages(plugin.invoke_tool("kernelcube", TOOL, creds, parameters))
        return answer

    assert invoke({}) == {"status": "error", "reason": "Either command or code must be provided"}
    assert invoke({"code": "1"}, {})["reason"].startswith("no gateway URL")
    failed = invoke({"code": "print('partial')\n{}['missing']"})
    assert failed["status"] == "error" and failed["reason"] == "KeyError: 'missing'"
    assert failed["results"][0]["stdout"] == "partial\n" and "KeyError" in failed["results"][0]["error"]["traceback"]
    command = invoke({"command": "exit 4", "code": "print('never runs')"})
    assert command["status"] == "error" and command["reason"].startswith("command exited with 4")
    assert [r["type"] for r in command["results"]] == ["command"]
    ghost = invoke({"code": "1", "session_id": "no-such-session"})
    assert ghost["status"] == "error" and "no-such-session" in ghost["reason"] and "not found" in ghost["reason"]
    bash = invoke({"code": "echo $((40 + 2))", "language": "bash"})
    assert bash["status"] == "success" and bash["results"][0]["result"] == "42"
    overridden = invoke({"code": "'via router_url'", "router_url": gateway.url},
                        {"kernelcube_url": "http://127.0.0.1:1", "kernelcube_token": TOKEN})
    assert overridden["status"] == "success"
    assert json.dumps(overridden).count(TOKEN) == 0  # the token is never echoed
