"""`POST /api/execute` over real HTTP: the wire shape, defaults kept from upstream (60 s,
exit 124 and its suffix), validation errors with integer codes, working_dir jail, the private
environment, 413 before 401, unknown routes, and the group kill on client disconnect."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest

from picod_kernel.command_handlers import DEFAULT_TIMEOUT, _parse_execute_request

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return read(f"/proc/{pid}/stat").split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


def execute(picod, **body):
    return picod.request("POST", "/api/execute", json=body)


def test_success_shape(picod):
    response = execute(picod, command=["sh", "-c", "echo hi; echo warn >&2"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {"stdout", "stderr", "exit_code", "duration", "start_time", "end_time"}
    assert (body["stdout"], body["stderr"], body["exit_code"]) == ("hi\n", "warn\n", 0)
    assert isinstance(body["duration"], float) and RFC3339.match(body["start_time"]) and RFC3339.match(body["end_time"])


def test_default_timeout_is_60s():
    assert DEFAULT_TIMEOUT == "60s"
    assert _parse_execute_request({"command": ["x"]})[1] == 60
    assert _parse_execute_request({"command": ["x"], "timeout": ""})[1] == 60


def test_timeout_answers_124_with_suffix(picod):
    body = execute(picod, command=["sh", "-c", "echo a; echo b >&2; sleep 30"], timeout="1.5s").json()
    assert body["exit_code"] == 124
    assert body["stdout"] == "a\n"
    assert body["stderr"] == "b\nCommand timed out after 2 seconds"
    assert body["duration"] < 5


def test_nonzero_exit_and_missing_binary(picod):
    assert execute(picod, command=["sh", "-c", "exit 7"]).json()["exit_code"] == 7
    body = execute(picod, command=["no-such-binary-here"]).json()
    assert body["exit_code"] == 1 and "no-such-binary-here" in body["stderr"]


@pytest.mark.parametrize(("body", "wording"), [
    ({}, "'Command' failed on the 'required' tag"),
    ({"command": None}, "required"),
    ({"command": []}, "command cannot be empty"),
    ({"command": "ls"}, "array of strings"),
    ({"command": ["ls", 1]}, "array of strings"),
    ({"command": ["ls"], "timeout": "120"}, "Invalid timeout format: time: missing unit"),
    ({"command": ["ls"], "timeout": 5}, "Invalid timeout format"),
    ({"command": ["ls"], "env": {"A": 1}}, "'env' must be an object"),
    ({"command": ["ls"], "working_dir": "../.."}, "Invalid working directory: access denied"),
])
def test_validation_errors(picod, body, wording):
    response = execute(picod, **body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 400 and isinstance(error["code"], int)
    assert wording in error["error"]


def test_malformed_json(picod):
    response = picod.request("POST", "/api/execute", data=b"{not json")
    assert response.status_code == 400 and "invalid JSON body" in response.json()["error"]
    response = picod.request("POST", "/api/execute", data=b"[1, 2]")
    assert response.status_code == 400 and "JSON object" in response.json()["error"]


def test_working_dir_created_inside_workspace(picod):
    body = execute(picod, command=["pwd"], working_dir="/deep/er").json()
    assert body["stdout"].strip() == os.path.join(picod.workspace, "deep/er")
    assert execute(picod, command=["pwd"]).json()["stdout"].strip() == picod.workspace


def test_environment_private_and_overridable(picod):
    script = "echo key=${PICOD_AUTH_PUBLIC_KEY:-unset} extra=$EXTRA path=${PATH:+set}"
    body = execute(picod, command=["sh", "-c", script], env={"EXTRA": "yes"}).json()
    assert body["stdout"] == "key=unset extra=yes path=set\n"


def test_413_before_401(picod):
    # No Authorization header at all: the size check must answer first.
    response = picod.request("POST", "/api/execute", auth=False, data=b"x" * (32 * 1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large", "detail": "maximum allowed size is 33554432 bytes"}


def test_413_for_chunked_body(picod):
    def chunks():
        block = b"y" * (1024 * 1024)
        for _ in range(40):
            yield block

    response = picod.request("POST", "/api/execute", data=chunks())
    assert response.status_code == 413
    assert response.json()["error"] == "request body too large"


def test_body_at_limit_accepted(picod):
    padding = " " * (32 * 1024 * 1024 - 64)
    body = (json.dumps({"command": ["true"]}) + padding)[: 32 * 1024 * 1024].encode()
    response = picod.request("POST", "/api/execute", data=body)
    assert response.status_code == 200, response.text


def test_unknown_route_and_wrong_method_are_plain_404(picod):
    for method, path in [("GET", "/nothing"), ("GET", "/api/execute"), ("DELETE", "/api/files")]:
        response = picod.request(method, path, auth=False)
        assert (response.status_code, response.text) == (404, "404 page not found")


def test_client_disconnect_kills_the_command(picod, tmp_path):
    pidfile = os.path.join(picod.workspace, "disconnect.pid")
    payload = json.dumps({"command": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"], "timeout": "600s"})
    host, port = picod.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall((f"POST /api/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {picod.token()}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}").encode())
        deadline = time.monotonic() + 10
        while not (os.path.exists(pidfile) and read(pidfile).strip()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    pid = int(read(pidfile))
    deadline = time.monotonic() + 10
    while running(pid):
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.05)


def test_health_needs_no_auth(picod):
    body = picod.request("GET", "/health", auth=False).json()
    assert body["status"] == "ok" and body["service"] == "PicoD" and body["kernel"] == "ready"
    assert re.match(r"^(\d+m)?\d+(\.\d+)?s$", body["uptime"])
