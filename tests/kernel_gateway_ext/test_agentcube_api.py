"""The AgentCube faces with the unmodified agentcube-sdk (0.1.0): create, execute_command,
run_code, write_file, upload_file, download_file, list_files, stop; and the Router and
Workload Manager dialects for every refusal."""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import TOKEN, body, wait_ready


@pytest.fixture
def base_url(jp_serverapp, jp_http_port, jp_base_url) -> str:
    return f"http://localhost:{jp_http_port}{jp_base_url.rstrip('/')}"


def sdk_session(base_url: str, tmp_path) -> dict:
    """Everything the SDK does, in a thread (it is synchronous)."""
    from agentcube import CodeInterpreterClient
    from agentcube.exceptions import CommandExecutionError

    seen: dict = {}
    local = tmp_path / "upload.bin"
    local.write_bytes(b"\x00\x01binary\xff")
    with CodeInterpreterClient(name="default", namespace="default", router_url=base_url,
                               workload_manager_url=base_url, auth_token=TOKEN) as client:
        seen["session_id"] = client.session_id
        seen["echo"] = client.execute_command("echo hello world")
        seen["python"] = client.run_code("python", "import sys; print(sys.version_info[0] * 2)")
        seen["bash"] = client.run_code("bash", "echo $((6 * 7))")
        client.write_file("some text\n", "notes/a.txt")
        client.upload_file(str(local), "data/upload.bin")
        seen["files"] = sorted(f["name"] for f in client.list_files("."))
        seen["data_files"] = client.list_files("data")
        client.download_file("data/upload.bin", str(tmp_path / "down" / "copy.bin"))
        seen["downloaded"] = (tmp_path / "down" / "copy.bin").read_bytes()
        try:
            client.execute_command("false")
        except CommandExecutionError as exc:
            seen["failure"] = exc.exit_code
    return seen


async def test_unmodified_sdk_end_to_end(jp_fetch, gateway, base_url, tmp_path):
    await wait_ready(jp_fetch)
    seen = await asyncio.to_thread(sdk_session, base_url, tmp_path)
    assert seen["echo"] == "hello world\n"
    assert seen["python"] == "6\n" and seen["bash"] == "42\n"
    assert {"notes", "data"} <= set(seen["files"])
    assert seen["data_files"][0]["name"] == "upload.bin" and seen["data_files"][0]["size"] == 9
    assert seen["downloaded"] == b"\x00\x01binary\xff"
    assert seen["failure"] == 1
    # stop() deleted the session and its sandbox
    gone = await jp_fetch("v1", "sessions", seen["session_id"], raise_error=False)
    assert gone.code == 404


async def test_router_relays_path_query_and_header(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    created = body(await jp_fetch("v1", "code-interpreter", method="POST",
                                  body=json.dumps({"name": "default", "namespace": "default", "ttl": 3600})))
    session_id = created["sessionId"]
    assert created["kind"] == "Sandbox" and created["entryPoints"][0]["path"] == "/"
    headers = {"x-agentcube-session-id": session_id}
    write = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                           "api", "files", method="POST", headers={**headers, "Authorization": "Bearer ignored"},
                           body=json.dumps({"path": "q/x.txt", "content": "aGk="}))
    assert write.code == 200 and write.headers["x-agentcube-session-id"] == session_id
    listing = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                             "api", "files", params={"path": "q"}, headers=headers)
    assert [f["name"] for f in body(listing)["files"]] == ["x.txt"]
    # A PicoD error passes through untouched, in PicoD's own dialect.
    missing = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                             "api", "files", "nope", headers=headers, raise_error=False)
    assert missing.code == 404 and body(missing) == {"error": "File not found", "code": 404}
    deleted = await jp_fetch("v1", "code-interpreter", "sessions", session_id, method="DELETE")
    assert body(deleted) == {"message": "Sandbox deleted successfully"}


async def test_router_creates_session_without_header(jp_fetch, gateway):
    response = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                              "api", "execute", method="POST", body=json.dumps({"command": ["echo", "implicit"]}))
    assert body(response)["stdout"] == "implicit\n"
    session_id = response.headers["x-agentcube-session-id"]
    assert body(await jp_fetch("v1", "sessions", session_id))["template"] == "default"


async def test_router_errors(jp_fetch, gateway):
    unknown = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                             "api", "execute", method="POST", body="{}", raise_error=False,
                             headers={"x-agentcube-session-id": "3f1e-unknown"})
    assert unknown.code == 404
    assert body(unknown) == {"error": 'sessions.agentcube.volcano.sh "3f1e-unknown" not found'}
    assert "x-agentcube-session-id" not in unknown.headers

    template = await jp_fetch("v1", "namespaces", "team", "code-interpreters", "nope", "invocations",
                              "api", "execute", method="POST", body="{}", raise_error=False)
    assert template.code == 404
    assert body(template) == {"error": 'codeinterpreters.agentcube.volcano.sh "team/nope" not found'}

    runtime = await jp_fetch("v1", "namespaces", "default", "agent-runtimes", "default", "invocations", "",
                             raise_error=False)
    assert runtime.code == 404 and "agentruntimes.agentcube.volcano.sh" in body(runtime)["error"]

    no_token = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                              "api", "execute", method="POST", body="{}", raise_error=False,
                              headers={"Authorization": "token wrong"})
    assert no_token.code == 401 and body(no_token)["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(("payload", "status", "message"), [
    ("not json", 400, "Invalid request body"),
    ({"name": "default"}, 400, "namespace is required"),
    ({"namespace": "default"}, 400, "name is required"),
    ({"name": "nope", "namespace": "default"}, 404, "code interpreter not found"),
])
async def test_workload_manager_errors(jp_fetch, gateway, payload, status, message):
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    response = await jp_fetch("v1", "code-interpreter", method="POST", body=raw, raise_error=False)
    assert response.code == status and body(response) == {"message": message}


async def test_workload_manager_delete_unknown(jp_fetch, gateway):
    response = await jp_fetch("v1", "code-interpreter", "sessions", "abc", method="DELETE", raise_error=False)
    assert response.code == 404
    assert body(response) == {"message": "Session ID abc not found, maybe already deleted"}


async def test_concurrency_limit_answers_429(jp_fetch, gateway):
    gateway.router_limiter.limit = 0
    response = await jp_fetch("v1", "namespaces", "default", "code-interpreters", "default", "invocations",
                              "api", "execute", method="POST", body="{}", raise_error=False,
                              headers={"x-agentcube-session-id": "any"})
    assert response.code == 429
    assert body(response) == {"error": "server overloaded, please try again later", "code": "SERVER_OVERLOADED"}



@pytest.fixture
def agent_template(gateway_config):
    # A stand-in HTTP agent: it serves its workspace on the PORT it is given.
    gateway_config["templates"] = {"files-agent": {
        "kind": "agent-runtime", "pool_size": 1,
        "command": ["sh", "-c", "echo agent-here > index.html; exec python3 -m http.server --bind 127.0.0.1 $PORT"]}}


async def test_agent_runtime_through_the_router(agent_template, jp_fetch, gateway):
    await wait_ready(jp_fetch)
    first = await jp_fetch("v1", "namespaces", "default", "agent-runtimes", "files-agent", "invocations", "")
    assert first.code == 200 and b"agent-here" in first.body
    session_id = first.headers["x-agentcube-session-id"]
    again = await jp_fetch("v1", "namespaces", "default", "agent-runtimes", "files-agent", "invocations",
                           "index.html", headers={"x-agentcube-session-id": session_id})
    assert again.body == b"agent-here\n" and again.headers["x-agentcube-session-id"] == session_id
    # Agent runtimes run an agent, not code: the execute API and its files point to the Router.
    for payload in ({"code": "1", "template": "files-agent"}, {"code": "1", "session_id": session_id}):
        refused = await jp_fetch("v1", "execute", method="POST", body=json.dumps(payload), raise_error=False)
        assert refused.code == 400 and body(refused)["code"] == "WRONG_API"
        assert "/v1/namespaces/<namespace>/agent-runtimes/files-agent/invocations/" in body(refused)["error"]
    files = await jp_fetch("v1", "sessions", session_id, "files", "index.html", raise_error=False)
    assert files.code == 400 and body(files)["code"] == "WRONG_API"
    # A code-interpreter name is not an agent runtime.
    wrong = await jp_fetch("v1", "namespaces", "default", "agent-runtimes", "default", "invocations", "",
                           raise_error=False)
    assert wrong.code == 404
    await jp_fetch("v1", "agent-runtime", "sessions", session_id, method="DELETE")
