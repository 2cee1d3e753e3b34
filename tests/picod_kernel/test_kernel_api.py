"""The kernel bridge over real HTTP and WebSocket: state persisting across `/api/run` calls,
rich MIME output, errors, NDJSON streaming, timeout with interrupt, explicit interrupt of
`while True: pass`, restart, death by `os._exit(1)` with automatic restart, the channels
WebSocket in the legacy JSON framing, and a daemon whose kernel cannot start."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect


def run(picod, code, **extra):
    response = picod.request("POST", "/api/run", json={"code": code, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_state_persists_between_runs(picod):
    first = run(picod, "counter = 41")
    assert first["status"] == "ok" and first["results"] == []
    second = run(picod, "counter += 1\ncounter")
    assert second["results"] == [{"text/plain": "42", "is_main_result": True}]
    assert second["execution_count"] == first["execution_count"] + 1


def test_execution_shape_and_streams(picod):
    body = run(picod, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert set(body) == {"execution_count", "status", "stdout", "stderr", "results", "error", "duration_ms"}
    assert (body["stdout"], body["stderr"], body["error"]) == ("out\n", "err\n", None)
    assert body["duration_ms"] > 0


def test_rich_output(picod):
    code = ("from IPython.display import HTML, Image, display\n"
            "import base64\n"
            "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n"
            "display(HTML('<b>bold</b>'))\n"
            "display(Image(data=png, format='png'))\n"
            "{'answer': 42}")
    results = run(picod, code)["results"]
    assert results[0]["text/html"] == "<b>bold</b>" and results[0]["is_main_result"] is False
    assert results[1]["image/png"].startswith("iVBORw0KGgo") and results[1]["is_main_result"] is False
    assert results[2]["text/plain"] == "{'answer': 42}" and results[2]["is_main_result"] is True


def test_error(picod):
    body = run(picod, "1/0")
    assert body["status"] == "error"
    assert body["error"]["name"] == "ZeroDivisionError" and body["error"]["value"] == "division by zero"
    assert any("ZeroDivisionError" in line for line in body["error"]["traceback"])


def test_env_reaches_the_kernel(picod):
    body = run(picod, "import os; os.environ['RUN_VAR'] + ':' + str('PICOD_AUTH_PUBLIC_KEY' in os.environ)",
               env={"RUN_VAR": "here"})
    assert body["results"][0]["text/plain"] == "'here:False'"


def test_kernel_env_lasts_and_an_executions_env_does_not(picod):
    response = picod.request("POST", "/api/kernel/env", json={"env": {"LASTING": "1", "SHADOWED": "base"}})
    assert response.status_code == 200, response.text
    run(picod, "import os", env={"SHADOWED": "for one run", "FLEETING": "x"})
    body = run(picod, "import os; [os.environ.get(k) for k in ('LASTING', 'SHADOWED', 'FLEETING')]")
    assert body["results"][0]["text/plain"] == "['1', 'base', None]"
    for bad in ({}, {"env": ["A"]}, {"env": {"A": 1}}):
        refused = picod.request("POST", "/api/kernel/env", json=bad)
        assert refused.status_code == 400 and "'env'" in refused.json()["error"], bad


def test_ndjson_stream(picod):
    response = picod.request("POST", "/api/run", headers={"Accept": "application/x-ndjson"},
                             json={"code": "print('a')\nimport time; time.sleep(0.6)\nprint('b')\n7*6"}, stream=True)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    events = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["type"] for e in events] == ["start", "stdout", "stdout", "result", "end"]
    assert events[0]["execution_count"] is not None
    assert events[3]["text/plain"] == "42" and events[3]["is_main_result"]
    assert events[-1]["status"] == "ok" and events[-1]["duration_ms"] >= 600


@pytest.mark.parametrize("body", [{}, {"code": 1}, {"code": "1", "timeout": 0}, {"code": "1", "timeout": "5s"},
                                  {"code": "1", "timeout": True}, {"code": "1", "env": ["A"]}])
def test_run_validation(picod, body):
    response = picod.request("POST", "/api/run", json=body)
    assert response.status_code == 400 and response.json()["code"] == 400


def test_timeout_interrupts_and_kernel_stays_usable(picod):
    run(picod, "survivor = 'still here'")
    started = time.monotonic()
    body = run(picod, "while True: pass", timeout=1)
    assert body["status"] == "timeout" and body["error"]["name"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 5
    assert run(picod, "survivor")["results"][0]["text/plain"] == "'still here'"


def test_interrupt_endpoint(picod):
    # Interrupt only once the loop runs (its first output is streamed): a SIGINT that reaches an
    # idle kernel is lost, and the loop would then hold the module's shared kernel forever. The
    # run's own timeout is the backstop that frees the kernel if this test fails.
    response = picod.request("POST", "/api/run", headers={"Accept": "application/x-ndjson"}, stream=True,
                             json={"code": "print('looping', flush=True)\nwhile True: pass", "timeout": 30})
    lines = response.iter_lines()
    events = []
    for line in lines:
        events.append(json.loads(line))
        if events[-1]["type"] == "stdout":
            break
    assert events[-1] == {"type": "stdout", "text": "looping\n"}
    assert picod.request("POST", "/api/kernel/interrupt").json() == {"status": "ok"}
    events += [json.loads(line) for line in lines if line]
    assert events[-2]["type"] == "error" and events[-2]["name"] == "KeyboardInterrupt"
    assert events[-1]["type"] == "end" and events[-1]["status"] == "error"


def test_kernel_death_is_reported_and_kernel_restarted(fresh_picod):
    picod = fresh_picod()
    run(picod, "lost = 1")
    body = run(picod, "import os; os._exit(1)")
    assert body["status"] == "dead" and body["error"]["name"] == "DeadKernelError"
    deadline = time.monotonic() + 30
    while picod.request("GET", "/health", auth=False).json()["kernel"] != "ready":
        assert time.monotonic() < deadline, "the kernel was not restarted"
        time.sleep(0.1)
    after = run(picod, "'lost' in globals()")
    assert after["status"] == "ok" and after["results"][0]["text/plain"] == "False"


def test_restart_endpoint_clears_state(fresh_picod):
    picod = fresh_picod()
    run(picod, "temp = 1")
    response = picod.request("POST", "/api/kernel/restart")
    assert response.json() == {"status": "ok", "kernel": "ready"}
    assert run(picod, "'temp' in globals()")["results"][0]["text/plain"] == "False"


def test_daemon_without_working_kernel_still_serves_commands(fresh_picod):
    picod = fresh_picod("--kernel-python", "/bin/false")
    deadline = time.monotonic() + 30
    while (health := picod.request("GET", "/health", auth=False)).json()["kernel"] == "starting":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert health.status_code == 503 and health.json()["kernel"] == "failed" and health.json()["kernel_error"]
    response = picod.request("POST", "/api/run", json={"code": "1"})
    assert response.status_code == 503 and "failed" in response.json()["error"]
    assert picod.request("POST", "/api/execute", json={"command": ["true"]}).json()["exit_code"] == 0


def test_no_kernel_mode(fresh_picod):
    picod = fresh_picod("--no-kernel")
    assert picod.request("GET", "/health", auth=False).json()["kernel"] == "disabled"
    assert picod.request("POST", "/api/run", json={"code": "1"}).status_code == 404


def _ws_request(picod, token=None) -> HTTPRequest:
    return HTTPRequest(picod.url.replace("http", "ws") + "/api/kernel/channels",
                       headers={"Authorization": f"Bearer {token or picod.token()}"})


def _message(msg_type: str, content: dict, channel: str | None = None) -> str:
    msg = {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test", "session": "s",
                      "date": "2026-01-01T00:00:00Z", "version": "5.3"},
           "parent_header": {}, "metadata": {}, "content": content}
    if channel:
        msg["channel"] = channel
    return json.dumps(msg)


async def _until(conn, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "timed out waiting for a message"
        raw = await asyncio.wait_for(conn.read_message(), remaining)
        assert raw is not None, "the WebSocket closed"
        msg = json.loads(raw)
        if predicate(msg):
            return msg


@pytest.mark.asyncio
async def test_channels_websocket(picod):
    conn = await websocket_connect(_ws_request(picod))
    try:
        conn.write_message(_message("kernel_info_request", {}))  # no channel: shell
        reply = await _until(conn, lambda m: m["header"]["msg_type"] == "kernel_info_reply")
        assert reply["channel"] == "shell" and reply["content"]["language_info"]["name"] == "python"

        conn.write_message(_message("execute_request", {"code": "6*7", "silent": False}, channel="shell"))
        result = await _until(conn, lambda m: m["header"]["msg_type"] == "execute_result")
        assert result["channel"] == "iopub" and result["content"]["data"]["text/plain"] == "42"

        conn.write_message("not json")
        refused = await _until(conn, lambda m: m["header"]["msg_type"] == "error")
        assert refused["content"]["ename"] == "InvalidMessage"
    finally:
        conn.close()
        # Let the closing handshake finish, so the socket is closed before this test's loop is.
        while await asyncio.wait_for(conn.read_message(), 5) is not None:
            pass


@pytest.mark.asyncio
async def test_channels_websocket_requires_auth(picod):
    from tests.support.keys import KeyPair
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(_ws_request(picod, token=KeyPair().token()))
    assert info.value.code == 401


def test_kernel_output_is_capped_per_execution(fresh_picod):
    """Kernel output is bounded like commands' output: what passes the cap is dropped and a
    marker says how much, so a flood of print never reaches the daemon's client whole."""
    picod = fresh_picod("--max-output", "1000")
    body = run(picod, "print('x' * 5000)\nimport sys; print('e' * 1500, file=sys.stderr)\n"
                      "from IPython.display import HTML, display\nfor _ in range(3): display(HTML('h' * 600))")
    assert body["stdout"] == "x" * 1000
    assert body["stderr"].startswith("e" * 1000)
    assert "stdout truncated: 4001 bytes beyond the 1000-byte cap were dropped" in body["stderr"]
    assert "stderr truncated: 501 bytes" in body["stderr"]
    assert len(body["results"]) == 1 and "results truncated" in body["stderr"]
    assert run(picod, "'fine'")["results"][0]["text/plain"] == "'fine'"


def test_failed_pip_install_is_an_error(picod):
    body = run(picod, "%pip install --no-index kernelcube-no-such-package", timeout=60)
    assert body["status"] == "error" and body["error"]["name"] == "RuntimeError"
    assert "pip exited with status 1" in body["error"]["value"]
    assert "_picod_strict_pip" not in run(picod, "dir()")["results"][0]["text/plain"]


def test_code_that_ignores_the_interrupt_gets_a_restarted_kernel_and_says_so(fresh_picod):
    picod = fresh_picod()
    run(picod, "lost = 1")
    body = run(picod, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)", timeout=1)
    assert body["status"] == "timeout" and body["error"]["name"] == "TimeoutError"
    assert "kernel was restarted" in body["error"]["value"] and "lost" in body["error"]["value"]
    # the next call is served by the new kernel, without a retry
    assert run(picod, "'lost' in globals()")["results"][0]["text/plain"] == "False"
