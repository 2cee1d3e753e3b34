"""The HTTP execute API through a real jupyter_server with the extension and real bubblewrap
sandboxes: sessions (201 + Location, list, get, delete), Python state persisting in the kernel,
rich results, bash, NDJSON streaming, files, and every refusal with its status and reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPClientError

from .conftest import TOKEN, body, wait_ready


async def execute(jp_fetch, **payload):
    return await jp_fetch("v1", "execute", method="POST", body=json.dumps(payload), raise_error=False)


async def test_session_lifecycle(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    created = await jp_fetch("v1", "sessions", method="POST", body="{}")
    assert created.code == 201
    session = body(created)
    assert created.headers["Location"].endswith(f"/v1/sessions/{session['session_id']}")
    assert session["template"] == "default" and session["expires_at"] > session["created_at"]

    listed = body(await jp_fetch("v1", "sessions"))["sessions"]
    assert [s["session_id"] for s in listed] == [session["session_id"]]
    assert "sandbox" not in listed[0], "provider internals must not leak to clients"
    one = body(await jp_fetch("v1", "sessions", session["session_id"]))
    assert one["status"] == "ready"

    deleted = await jp_fetch("v1", "sessions", session["session_id"], method="DELETE")
    assert deleted.code == 204
    gone = await jp_fetch("v1", "sessions", session["session_id"], raise_error=False)
    assert gone.code == 404 and body(gone)["code"] == "SESSION_NOT_FOUND"


async def test_python_state_persists_and_results_are_rich(jp_fetch, gateway):
    first = await execute(jp_fetch, code="import numpy as np\nx = np.arange(5)\nprint('hi')")
    assert first.code == 200, first.body
    result = body(first)
    session_id = result["session_id"]
    assert first.headers["X-Session-Id"] == session_id
    assert (result["status"], result["stdout"]) == ("ok", "hi\n")

    second = body(await execute(jp_fetch, code="int(x.sum())", session_id=session_id))
    assert second["results"] == [{"text/plain": "10", "is_main_result": True}]
    assert second["execution_count"] == result["execution_count"] + 1

    html = body(await execute(jp_fetch, session_id=session_id,
                              code="from IPython.display import HTML, display\ndisplay(HTML('<i>x</i>'))"))
    assert html["results"][0]["text/html"] == "<i>x</i>"
    plot = body(await execute(jp_fetch, session_id=session_id, code=(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")))
    assert any("image/png" in r for r in plot["results"]), plot

    error = body(await execute(jp_fetch, code="1/0", session_id=session_id))
    assert error["status"] == "error" and error["error"]["name"] == "ZeroDivisionError"


async def test_bash_and_stream(jp_fetch, gateway):
    result = body(await execute(jp_fetch, code="echo out; echo err >&2; exit 3", language="bash"))
    assert (result["stdout"], result["stderr"], result["exit_code"], result["status"]) == ("out\n", "err\n", 3, "error")
    session_id = result["session_id"]

    streamed = await jp_fetch("v1", "execute", method="POST", headers={"Accept": "application/x-ndjson"},
                              body=json.dumps({"code": "print(1)\nprint(2)\n3", "session_id": session_id}))
    assert streamed.headers["Content-Type"] == "application/x-ndjson"
    events = [json.loads(line) for line in streamed.body.decode().splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-2:] == ["result", "end"] and set(types[1:-2]) == {"stdout"}
    assert "".join(e["text"] for e in events if e["type"] == "stdout") == "1\n2\n"
    assert events[0]["session_id"] == session_id and events[-1]["status"] == "ok"


async def test_env_holds_for_one_execution(jp_fetch, gateway):
    first = body(await execute(jp_fetch, code="import os; os.environ['HOME'] = '/kept'; os.environ['HOME']"))
    session = first["session_id"]
    during = body(await execute(jp_fetch, session_id=session, env={"HOME": "/for-this-run", "ONLY_NOW": "yes"},
                                code="os.environ['HOME'], os.environ['ONLY_NOW']"))
    assert during["results"][0]["text/plain"] == "('/for-this-run', 'yes')"
    after = body(await execute(jp_fetch, session_id=session, code="os.environ['HOME'], 'ONLY_NOW' in os.environ"))
    assert after["results"][0]["text/plain"] == "('/kept', False)"
    # no trace in the user's namespace or history
    assert body(await execute(jp_fetch, session_id=session, code="[n for n in dir() if 'kernelcube' in n]"))[
        "results"][0]["text/plain"] == "[]"
    assert after["execution_count"] == during["execution_count"] + 1


async def test_timeout_interrupts_and_session_survives(jp_fetch, gateway):
    first = body(await execute(jp_fetch, code="kept = 'yes'"))
    timed_out = body(await execute(jp_fetch, code="while True: pass", timeout=1, session_id=first["session_id"]))
    assert timed_out["status"] == "timeout"
    after = body(await execute(jp_fetch, code="kept", session_id=first["session_id"]))
    assert after["results"][0]["text/plain"] == "'yes'"


async def test_files_round_trip(jp_fetch, gateway):
    session_id = body(await jp_fetch("v1", "sessions", method="POST", body="{}"))["session_id"]
    payload = bytes(range(256)) * 100
    put = await jp_fetch("v1", "sessions", session_id, "files", "data/blob.bin", method="PUT", body=payload)
    assert put.code == 201 and body(put)["size"] == len(payload)
    got = await jp_fetch("v1", "sessions", session_id, "files", "data/blob.bin")
    assert got.body == payload
    seen = body(await execute(jp_fetch, session_id=session_id,
                              code="len(open('data/blob.bin','rb').read())"))
    assert seen["results"][0]["text/plain"] == str(len(payload))
    # The code the file was uploaded for may change it and write next to it (PicoD wrote both).
    changed = body(await execute(jp_fetch, session_id=session_id, code=(
        "open('data/blob.bin', 'ab').write(b'+'); open('data/new.txt', 'w').write('x'); "
        "import os; os.path.getsize('data/blob.bin')")))
    assert changed["results"][0]["text/plain"] == str(len(payload) + 1), changed
    assert (await jp_fetch("v1", "sessions", session_id, "files", "data/new.txt")).body == b"x"
    missing = await jp_fetch("v1", "sessions", session_id, "files", "nope.txt", raise_error=False)
    assert missing.code == 404
    escape = await jp_fetch("v1", "sessions", session_id, "files", "../../etc/passwd", raise_error=False)
    assert escape.code == 400 and "access denied" in body(escape)["error"]
    # An encoded slash is part of a name (one decoding at each hop), not a way out.
    literal = await jp_fetch("v1", "sessions", session_id, "files", "..%2F..%2Fetc%2Fpasswd", raise_error=False)
    assert literal.code == 404


@pytest.mark.parametrize(("payload", "status", "wording"), [
    ("{not json", 400, "malformed JSON"),
    ("[]", 400, "JSON object"),
    ({}, 400, "'code' is required"),
    ({"code": "1", "language": "ruby"}, 400, "'language' must be one of"),
    ({"code": "1", "timeout": -1}, 400, "positive number"),
    ({"code": "1", "env": {"A": 1}}, 400, "'env' must be"),
    ({"code": "1", "session_id": "no-such-session"}, 404, "not found"),
    ({"code": "1", "template": "no-such-template"}, 404, "template 'no-such-template' not found"),
    ({"code": "1", "sesion_id": "x"}, 400, "unknown field(s) 'sesion_id'; accepted fields: code, language, "
                                           "session_id, template, timeout, env, ansi"),
    ({"code": "1", "ansi": "no"}, 400, "'ansi' must be true or false"),
])
async def test_refusals(jp_fetch, gateway, payload, status, wording):
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    response = await jp_fetch("v1", "execute", method="POST", body=raw, raise_error=False)
    assert response.code == status
    assert wording in body(response)["error"]


async def test_unknown_session_fields_are_refused(jp_fetch, gateway):
    response = await jp_fetch("v1", "sessions", method="POST", body=json.dumps({"templte": "default"}),
                              raise_error=False)
    assert response.code == 400
    assert body(response)["error"] == "unknown field(s) 'templte'; accepted fields: template, timeout"


async def test_ansi_false_strips_escape_sequences(jp_fetch, gateway):
    coloured = body(await execute(jp_fetch, code="1/0"))
    assert any("\x1b[" in line for line in coloured["error"]["traceback"]), "the kernel no longer colours"
    session_id = coloured["session_id"]
    plain = body(await execute(jp_fetch, code="1/0", session_id=session_id, ansi=False))
    assert plain["status"] == "error" and plain["error"]["name"] == "ZeroDivisionError"
    assert plain["error"]["traceback"] and not any("\x1b" in line for line in plain["error"]["traceback"])
    assert "ZeroDivisionError" in plain["error"]["traceback"][-1]
    streamed = await jp_fetch("v1", "execute", method="POST", headers={"Accept": "application/x-ndjson"},
                              body=json.dumps({"code": "1/0", "session_id": session_id, "ansi": False}))
    errors = [e for e in map(json.loads, streamed.body.decode().splitlines()) if e["type"] == "error"]
    assert errors and not any("\x1b" in line for line in errors[0]["traceback"])


async def test_active_sessions_gauge(jp_fetch, gateway):
    async def active() -> float:
        text = (await jp_fetch("metrics")).body.decode()
        return float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith('kernelcube_sessions_active{template="default"}')))
    assert await active() == 0
    session_id = body(await jp_fetch("v1", "sessions", method="POST", body="{}"))["session_id"]
    assert await active() == 1
    await jp_fetch("v1", "sessions", session_id, method="DELETE")
    assert await active() == 0


async def test_oversized_body_is_413(jp_fetch, gateway):
    gateway.max_body_bytes = 1000
    response = await jp_fetch("v1", "execute", method="POST", body=json.dumps({"code": "x" * 2000}),
                              raise_error=False)
    assert response.code == 413 and body(response)["code"] == "BODY_TOO_LARGE"


async def test_token_required(jp_fetch, gateway):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("v1", "sessions", headers={"Authorization": "token wrong"})
    assert info.value.code == 401
    assert body(info.value.response)["code"] == "UNAUTHORIZED"
    for header in (f"Bearer {TOKEN}", f"token {TOKEN}"):
        assert (await jp_fetch("v1", "sessions", headers={"Authorization": header})).code == 200
    by_query = await jp_fetch("v1", "sessions", params={"token": TOKEN}, headers={"Authorization": ""})
    assert by_query.code == 200
    wrong_query = await jp_fetch("v1", "sessions", params={"token": "wrong"}, headers={"Authorization": ""},
                                 raise_error=False)
    assert wrong_query.code == 401


@pytest.fixture
def no_isolation(gateway_config):
    gateway_config["isolation"] = "none"


async def test_isolation_none_runs_plain_processes(no_isolation, jp_fetch, gateway):
    result = body(await execute(jp_fetch, code="import os; os.getcwd()"))
    workspace = result["results"][0]["text/plain"].strip("'")
    assert workspace.startswith(gateway.provider.root) and workspace.endswith("/workspace")


async def test_sandbox_is_isolated(jp_fetch, gateway):
    script = ("pwd; grep CapEff /proc/self/status; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | paste -sd,; "
              "python3 -c 'import jupyter_server' 2>&1 | tail -1; "
              "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), timeout=2)' 2>&1 | tail -1; "
              "touch /usr/x 2>&1; echo $PICOD_AUTH_PUBLIC_KEY")
    result = body(await execute(jp_fetch, code=script, language="bash"))
    lines = result["stdout"].splitlines()
    assert lines[0] == "/workspace"
    assert lines[1] == "CapEff:\t0000000000000000"
    assert lines[2] == "lo"  # no network but loopback
    assert "No module named 'jupyter_server'" in lines[3]  # the gateway's packages are not there
    assert "unreachable" in lines[4].lower() or "Errno" in lines[4]
    assert "Read-only file system" in lines[5]
    assert lines[6] == ""  # the daemon's key is not in the user's environment


def _wheel(name: str, version: str, module_source: str) -> bytes:
    """A minimal pure-Python wheel, built in memory (no network needed to install it)."""
    import io
    import zipfile
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": module_source,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return buffer.getvalue()


async def test_pip_installs_into_the_workspace_and_failures_are_errors(jp_fetch, gateway):
    session = body(await execute(jp_fetch, code="1"))["session_id"]
    wheel = "kc_demo-1.0-py3-none-any.whl"
    uploaded = await jp_fetch("v1", "sessions", session, "files", wheel, method="PUT",
                              body=_wheel("kc_demo", "1.0", "ANSWER = 42\n"))
    assert uploaded.code == 201
    installed = body(await execute(jp_fetch, session_id=session, code=f"%pip install --no-index {wheel}\n"
                                   "import kc_demo, os\n(kc_demo.ANSWER, os.path.dirname(kc_demo.__file__))"))
    assert installed["status"] == "ok", installed
    assert installed["results"][-1]["text/plain"] == "(42, '/workspace/.packages')"
    failed = body(await execute(jp_fetch, session_id=session, code="%pip install --no-index no-such-package-kc"))
    assert failed["status"] == "error" and "pip exited with status 1" in failed["error"]["value"]


async def test_interrupt_endpoint_stops_the_running_code_and_keeps_state(jp_fetch, gateway):
    session = body(await execute(jp_fetch, code="kept = 'yes'"))["session_id"]
    running = asyncio.ensure_future(execute(jp_fetch, session_id=session, code="while True: pass"))
    deadline = time.monotonic() + 30
    while True:  # interrupt once the loop runs: a SIGINT to an idle kernel would be lost
        await asyncio.sleep(0.3)
        interrupted = await jp_fetch("v1", "sessions", session, "interrupt", method="POST", body=b"")
        assert interrupted.code == 204
        if running.done() or time.monotonic() > deadline:
            break
        try:
            await asyncio.wait_for(asyncio.shield(running), 1.0)
        except asyncio.TimeoutError:
            continue
    result = body(await running)
    assert result["status"] == "error" and result["error"]["name"] == "KeyboardInterrupt"
    assert body(await execute(jp_fetch, session_id=session, code="kept"))["results"][0]["text/plain"] == "'yes'"
    unknown = await jp_fetch("v1", "sessions", "no-such-session", "interrupt", method="POST", body=b"",
                             raise_error=False)
    assert unknown.code == 404


async def test_a_client_that_leaves_stops_its_execution(jp_fetch, gateway):
    session = body(await execute(jp_fetch, code="count = 0"))["session_id"]
    for language, code in (("python", "import time\nwhile True:\n    count += 1\n    time.sleep(0.01)"),
                           ("bash", "sleep 30; echo finished >> leftover.txt")):
        with pytest.raises(HTTPClientError):  # the client gives up and closes its connection
            await jp_fetch("v1", "execute", method="POST", request_timeout=2,
                           body=json.dumps({"code": code, "language": language, "session_id": session}))
    started = time.monotonic()
    after = body(await execute(jp_fetch, session_id=session, code="count > 0", timeout=20))
    assert after["results"][0]["text/plain"] == "True"  # interrupted, not restarted: state kept
    assert time.monotonic() - started < 10  # the kernel was free at once, not after the loop
    ps = body(await execute(jp_fetch, session_id=session, language="bash",
                            code="ps -eo args | grep -c '^sleep 30' || true"))
    assert ps["stdout"].strip() == "0"
