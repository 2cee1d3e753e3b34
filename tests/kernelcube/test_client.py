"""`CodeInterpreterClient` against a real gateway: state persists between run_code calls (both
argument orders), `env`, streaming callbacks, rich results (a matplotlib PNG, HTML, JSON), errors in
the code, commands (shell string and argv), every file method, timeouts, the error mapping
(unknown session, unknown template, bad token, missing file), lazy and eager sessions,
reattaching by session id, close() ending the session or keeping it, and templates."""

from __future__ import annotations

import base64
import os
import threading

import pytest
import requests

from kernelcube import (
    AuthenticationError,
    CodeInterpreterClient,
    CommandExecutionError,
    ExecutionTimeout,
    KernelCubeError,
    RemoteFileNotFound,
    SessionNotFound,
    TemplateNotFound,
)
from tests.support.client_gateway import HEADERS, sessions_on

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(connect):
    with CodeInterpreterClient(**connect) as ci:
        yield ci


def test_state_persists_between_calls_in_either_argument_order(client):
    first = client.run_code("x = 40\nx + 1")
    assert first.ok and first.text == "41" and first.session_id == client.session_id
    second = client.run_code("python", "x += 2\nprint('x is', x)")  # the agentcube-sdk's order
    assert second.stdout == "x is 42\n" and second.logs.stdout == ["x is 42\n"]
    assert second.execution_count == first.execution_count + 1
    assert client.run_code("x", language="py").text == "42"


def test_env_reaches_the_code(client):
    assert client.run_code("import os\nos.environ['GREETING']", env={"GREETING": "hello"}).text == "'hello'"
    assert client.run_code("echo $GREETING-sh", language="bash", env={"GREETING": "hi"}).stdout == "hi-sh\n"


def test_streaming_callbacks_see_output_as_it_comes(client):
    seen: list[tuple[str, object]] = []
    code = ("import sys, time\n"
            "for i in range(3):\n"
            "    print('tick', i, flush=True); time.sleep(0.05)\n"
            "print('warn', file=sys.stderr)\n"
            "from IPython.display import display, HTML\n"
            "display(HTML('<b>bold</b>'))\n"
            "7 * 6")
    execution = client.run_code(code, on_stdout=lambda t: seen.append(("out", t)),
                                on_stderr=lambda t: seen.append(("err", t)),
                                on_result=lambda r: seen.append(("result", r)))
    outs = "".join(t for kind, t in seen if kind == "out")
    assert outs == "tick 0\ntick 1\ntick 2\n" and len([k for k, _ in seen if k == "out"]) >= 3
    assert ("err", "warn\n") in seen
    results = [r for kind, r in seen if kind == "result"]
    assert [r.html for r in results] == ["<b>bold</b>", None] and results[1].text == "42"
    # The Execution built from the stream is the same as the one-shot answer.
    assert execution.stdout == outs and execution.stderr == "warn\n" and execution.text == "42"
    assert execution.results == results and execution.status == "ok" and execution.duration_ms > 0


def test_an_error_streams_to_on_error_and_is_in_the_execution(client):
    errors = []
    execution = client.run_code("print('before')\n1 / 0", on_error=errors.append)
    assert execution.status == "error" and execution.stdout == "before\n"
    assert errors == [execution.error]
    assert execution.error.name == "ZeroDivisionError" and execution.error.value == "division by zero"
    assert "1 / 0" in execution.error.traceback and "\x1b[" not in execution.error.traceback  # no colours
    plain = client.run_code("undefined_name")
    assert plain.error.name == "NameError" and "undefined_name" in str(plain.error)


def test_rich_results_matplotlib_png_dataframe_html_and_json(client):
    execution = client.run_code("import matplotlib.pyplot as plt\n"
                                "plt.plot([1, 4, 9]); plt.title('squares'); plt.show()")
    [figure] = execution.results
    assert not figure.is_main_result and set(figure.formats()) == {"image/png", "text/plain"}
    assert base64.b64decode(figure.png).startswith(PNG_MAGIC) and figure.decode("image/png").startswith(PNG_MAGIC)
    assert figure.data["image/png"] == figure.png and figure.text.startswith("<Figure")
    table = client.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert table.results[0].is_main_result and "<table" in table.results[0].html and "a  b" in table.text
    data = client.run_code("from IPython.display import JSON\nJSON({'answer': 42})")
    assert data.results[0].json == {"answer": 42}
    with pytest.raises(KeyError, match="image/png"):
        data.results[0].decode("image/png")


def test_commands_through_a_shell_or_as_an_argv(client):
    assert client.execute_command("echo one && echo two | tr a-z A-Z") == "one\nTWO\n"
    # A list is an argv: spaces, quotes and $ reach the program unchanged.
    assert client.execute_command(["printf", "%s|", "a b", "$HOME", "it's"]) == "a b|$HOME|it's|"
    with pytest.raises(CommandExecutionError) as failed:
        client.execute_command("echo partial; ls /no/such/dir")
    assert failed.value.exit_code == 2 and "No such file" in failed.value.stderr
    assert failed.value.stdout == "partial\n" and failed.value.command == "echo partial; ls /no/such/dir"
    result = client.execute_command_result(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    bash = client.run_code("echo $((6 * 7))", language="bash")
    assert bash.stdout == "42\n" and bash.exit_code == 0 and bash.execution_count is None


def test_files_written_uploaded_listed_read_and_downloaded(client, tmp_path):
    assert client.write_file("hello\n", "notes/hello.txt")["size"] == 6
    assert client.write_file(b"\x00\x01binary", "/workspace/notes/data.bin")["path"] == "notes/data.bin"
    local = tmp_path / "local.csv"
    local.write_text("a,b\n1,2\n")
    assert client.upload_file(local, "/notes/table.csv")["path"] == "notes/table.csv"
    listing = {entry["name"]: entry for entry in client.list_files("notes")}
    assert sorted(listing) == ["data.bin", "hello.txt", "table.csv"]
    assert listing["table.csv"]["size"] == 8 and listing["table.csv"]["is_dir"] is False
    assert any(e["name"] == "notes" and e["is_dir"] for e in client.list_files())
    assert client.read_file("notes/data.bin") == b"\x00\x01binary"
    # The kernel sees the same workspace.
    assert client.run_code("import pandas as pd\nint(pd.read_csv('notes/table.csv')['b'].sum())").text == "2"
    client.run_code("open('made-by-kernel.txt', 'w').write('from the kernel')")
    target = tmp_path / "deep" / "er" / "copy.txt"
    assert client.download_file("made-by-kernel.txt", target) == str(target)
    assert target.read_text() == "from the kernel"
    with pytest.raises(RemoteFileNotFound) as missing:
        client.read_file("no-such-file.txt")
    assert isinstance(missing.value, FileNotFoundError) and missing.value.status == 404
    with pytest.raises(RemoteFileNotFound):
        client.list_files("no-such-dir")


def test_a_timeout_interrupts_the_code_and_keeps_the_session(client):
    client.run_code("kept = 'still here'")
    with pytest.raises(ExecutionTimeout) as stopped:
        client.run_code("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout=1)
    assert "1 s timeout" in stopped.value.message
    assert stopped.value.execution.stdout == "started\n" and stopped.value.execution.status == "timeout"
    assert client.run_code("kept").text == "'still here'"
    with pytest.raises(ExecutionTimeout):  # streaming too
        client.run_code("import time; time.sleep(30)", timeout=1, on_stdout=print)


def test_interrupt_stops_a_running_cell(client):
    started = threading.Event()

    def interrupt_when_started():
        started.wait(30)
        client.interrupt()

    helper = threading.Thread(target=interrupt_when_started)
    helper.start()
    execution = client.run_code("import time\nprint('go', flush=True)\ntime.sleep(30)",
                                on_stdout=lambda text: started.set())
    helper.join()
    assert execution.error.name == "KeyboardInterrupt" and execution.status == "error"


def test_unknown_session_is_session_not_found_with_the_gateway_message(connect):
    with CodeInterpreterClient(**connect, session_id="no-such-session") as ghost:
        with pytest.raises(SessionNotFound) as gone:
            ghost.run_code("1")
        assert gone.value.status == 404 and gone.value.code == "SESSION_NOT_FOUND"
        assert "no-such-session" in gone.value.message and "not found" in str(gone.value)
        for call in (ghost.info, lambda: ghost.write_file("x", "x"), lambda: ghost.execute_command("true")):
            with pytest.raises(SessionNotFound):
                call()
    # list_files goes through the Router, whose 404 says the same
    with CodeInterpreterClient(**connect, session_id="no-such-session", keep_session=True) as ghost:
        with pytest.raises(SessionNotFound):
            ghost.list_files()


def test_a_wrong_or_missing_token_is_an_authentication_error(gateway):
    with pytest.raises(AuthenticationError) as refused:
        CodeInterpreterClient(gateway.url, "wrong-token")
    assert refused.value.status == 401 and "token" in refused.value.message
    with CodeInterpreterClient(gateway.url, "", lazy=True) as tokenless, pytest.raises(AuthenticationError):
        tokenless.run_code("1")


def test_url_and_token_from_the_environment(gateway, monkeypatch):
    monkeypatch.setenv("KERNELCUBE_URL", gateway.url)
    monkeypatch.setenv("KERNELCUBE_TOKEN", HEADERS["Authorization"].split()[1])
    with CodeInterpreterClient() as ci:
        assert ci.url == gateway.url and ci.run_code("1 + 1").text == "2"
    monkeypatch.delenv("KERNELCUBE_URL")
    monkeypatch.delenv("ROUTER_URL", raising=False)
    with pytest.raises(ValueError, match="KERNELCUBE_URL"):
        CodeInterpreterClient()
    with pytest.raises(ValueError, match="http"):
        CodeInterpreterClient("ftp://example.invalid/")


def test_lazy_session_close_and_reattach(connect, gateway):
    lazy = CodeInterpreterClient(**connect, lazy=True, keep_session=True)
    assert lazy.session_id is None
    assert lazy.start() == lazy.session_id and lazy.start() == lazy.session_id  # once
    lazy.run_code("secret = 'reattached'")
    session_id = lazy.session_id
    assert session_id in sessions_on(gateway)
    lazy.close()  # kept
    lazy.close()
    with pytest.raises(KernelCubeError, match="closed"):
        lazy.run_code("1")
    with CodeInterpreterClient(**connect, session_id=session_id) as again:
        assert again.run_code("secret").text == "'reattached'"
        assert again.info()["session_id"] == session_id
    # Leaving the block ended it.
    assert session_id not in sessions_on(gateway)
    with CodeInterpreterClient(**connect, session_id=session_id) as ended, pytest.raises(SessionNotFound):
        ended.info()
    eager = CodeInterpreterClient(**connect)
    assert eager.session_id in sessions_on(gateway)
    eager.close(keep_session=True)
    assert eager.session_id in sessions_on(gateway)
    with CodeInterpreterClient(**connect, session_id=eager.session_id) as kept:
        assert kept.delete_session() is True
        assert kept.delete_session() is False  # already gone: close() will not fail either
    assert eager.session_id not in sessions_on(gateway)


def test_templates_and_the_agentcube_spellings(gateway):
    token = HEADERS["Authorization"].split()[1]
    with CodeInterpreterClient(gateway.url, name="alt", auth_token=token) as alt:  # agentcube-sdk names
        assert alt.template == "alt" and alt.info()["template"] == "alt"
        assert alt.run_code("6 * 7").text == "42"
    with pytest.raises(TemplateNotFound) as unknown:
        CodeInterpreterClient(gateway.url, token, template="no-such-template")
    assert "no-such-template" in unknown.value.message
    stop = CodeInterpreterClient(gateway.url, token)
    stop.stop()  # the agentcube-sdk's name for close
    assert stop.session_id not in sessions_on(gateway)


def test_the_client_imports_no_server_or_framework_package():
    import subprocess
    import sys
    check = ("import sys, kernelcube\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'kernel_gateway_ext', 'picod_kernel', "
             "'controller', 'jupyter_server', 'tornado', 'langchain_core', 'langgraph', 'mcp', 'dify_plugin', "
             "'requests', 'aiohttp'})\n"
             "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr


def test_sessions_left_by_clients_are_visible_to_the_api(gateway, connect):
    with CodeInterpreterClient(**connect) as ci:
        listed = requests.get(f"{gateway.url}/v1/sessions/{ci.session_id}", headers=HEADERS, timeout=30)
        assert listed.status_code == 200 and listed.json()["session_id"] == ci.session_id
        assert ci.session_id in [s["session_id"] for s in ci.list_sessions()]
