"""The client's HTTP policy, against a scripted HTTP server on loopback (the real gateway cannot
be made to answer 502 or 307 on demand): which calls are retried (idempotent ones, and session
creation on 503 + Retry-After until its deadline) and which are not (an execution), that no
redirect is followed, and that a refused connection is a KernelCubeError."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kernelcube import CapacityError, CodeInterpreterClient, KernelCubeError, SandboxError
from tests.support.redis import free_port

SESSION = {"session_id": "s-1", "template": "default", "created_at": 0, "expires_at": 0}


class ScriptedServer:
    """Answers each (method, path) from its script, in order (the last answer repeats), and
    counts the requests it got."""

    def __init__(self):
        self.script: dict[tuple[str, str], list[tuple[int, dict, object]]] = {}
        self.hits: dict[tuple[str, str], int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = (self.command, self.path.split("?")[0])
                server.hits[key] = server.hits.get(key, 0) + 1
                answers = server.script.get(key) or [(404, {}, {"error": "not scripted", "code": "NOT_FOUND"})]
                status, headers, body = answers[min(server.hits[key], len(answers)) - 1]
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def busy(seconds: str = "0") -> tuple[int, dict, dict]:
    return 503, {"Retry-After": seconds}, {"error": "no sandbox is free; retry shortly", "code": "CAPACITY_EXHAUSTED"}


def test_session_creation_waits_out_503_with_retry_after(server):
    server.script[("POST", "/v1/sessions")] = [busy(), busy(), (201, {}, SESSION)]
    server.script[("DELETE", "/v1/sessions/s-1")] = [(204, {}, None)]
    with CodeInterpreterClient(server.url, "t") as ci:
        assert ci.session_id == "s-1"
    assert server.hits[("POST", "/v1/sessions")] == 3 and server.hits[("DELETE", "/v1/sessions/s-1")] == 1


def test_session_creation_gives_up_at_its_deadline_with_the_gateway_message(server):
    server.script[("POST", "/v1/sessions")] = [busy("0.2")]
    started = time.monotonic()
    with pytest.raises(CapacityError) as refused:
        CodeInterpreterClient(server.url, "t", create_timeout=1)
    assert 0.8 < time.monotonic() - started < 5
    assert refused.value.message == "no sandbox is free; retry shortly" and refused.value.retry_after == 0.2
    assert 3 <= server.hits[("POST", "/v1/sessions")] <= 7


def test_an_execution_is_never_retried_but_a_read_is(server):
    bad_gateway = (502, {}, {"error": "the sandbox answered 500", "code": "SANDBOX_ERROR"})
    server.script[("POST", "/v1/execute")] = [bad_gateway, (200, {}, {"status": "ok"})]
    server.script[("GET", "/v1/sessions/s-1/files/a.txt")] = [bad_gateway, bad_gateway, (200, {}, "content")]
    server.script[("GET", "/v1/sessions/s-1")] = [busy()]
    with CodeInterpreterClient(server.url, "t", session_id="s-1", keep_session=True) as ci:
        with pytest.raises(SandboxError, match="the sandbox answered 500"):
            ci.run_code("1")
        assert server.hits[("POST", "/v1/execute")] == 1
        assert ci.read_file("a.txt") == b'"content"'
        assert server.hits[("GET", "/v1/sessions/s-1/files/a.txt")] == 3
        with pytest.raises(CapacityError):
            ci.info()
        assert server.hits[("GET", "/v1/sessions/s-1")] == 3  # two retries at most


def test_no_redirect_is_followed(server):
    elsewhere = ScriptedServer()
    try:
        server.script[("POST", "/v1/sessions")] = [(307, {"Location": f"{elsewhere.url}/v1/sessions"}, None)]
        with pytest.raises(KernelCubeError, match="redirect") as refused:
            CodeInterpreterClient(server.url, "t")
        assert refused.value.status == 307 and elsewhere.url in refused.value.message
        assert elsewhere.hits == {}  # neither the request nor the token went there
    finally:
        elsewhere.close()


def test_a_gateway_that_is_not_there_is_a_kernelcube_error():
    url = f"http://127.0.0.1:{free_port()}"
    with CodeInterpreterClient(url, "t", session_id="s-1", keep_session=True) as ci:
        started = time.monotonic()
        with pytest.raises(KernelCubeError, match="cannot reach the gateway"):
            ci.list_sessions()
        assert time.monotonic() - started < 5
