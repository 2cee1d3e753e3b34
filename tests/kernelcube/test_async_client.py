"""`AsyncCodeInterpreterClient` against a real gateway: the same behaviours as the sync
client's tests, each method at least once: run_code (state, both argument orders, coroutine
and plain callbacks, a PNG), commands, every file method, timeout and interrupt, the error
mapping (unknown session, bad token, missing file), lazy sessions, reattach and close."""

from __future__ import annotations

import asyncio

import pytest

from kernelcube import (
    AsyncCodeInterpreterClient,
    AuthenticationError,
    CommandExecutionError,
    ExecutionTimeout,
    RemoteFileNotFound,
    SessionNotFound,
)
from tests.support.client_gateway import sessions_on

pytestmark = pytest.mark.asyncio


async def test_run_code_state_streaming_and_rich_results(connect):
    async with AsyncCodeInterpreterClient(**connect) as ci:
        assert ci.session_id is not None  # eager on entry
        assert (await ci.run_code("y = 20\ny * 2")).text == "40"
        assert (await ci.run_code("python", "y + 1")).text == "21"
        chunks, results = [], []

        async def on_stdout(text):
            await asyncio.sleep(0)
            chunks.append(text)

        execution = await ci.run_code(
            "import matplotlib.pyplot as plt\nprint('plotting', flush=True)\nplt.plot([0, 1]); plt.show()",
            on_stdout=on_stdout, on_result=results.append)
        assert chunks == ["plotting\n"] and execution.results == results
        assert results[0].decode("image/png").startswith(b"\x89PNG")
        errors = []
        failed = await ci.run_code("raise ValueError('bad value')", on_error=errors.append)
        assert failed.error.name == "ValueError" and failed.error.value == "bad value" and errors == [failed.error]


async def test_commands_and_files(connect, tmp_path):
    async with AsyncCodeInterpreterClient(**connect) as ci:
        assert await ci.execute_command("echo a | tr a A") == "A\n"
        assert await ci.execute_command(["echo", "$NOT_EXPANDED"]) == "$NOT_EXPANDED\n"
        with pytest.raises(CommandExecutionError) as failed:
            await ci.execute_command("exit 7")
        assert failed.value.exit_code == 7
        assert (await ci.execute_command_result("echo e >&2; exit 1")).stderr == "e\n"
        await ci.write_file("text", "dir/a.txt")
        source = tmp_path / "b.bin"
        source.write_bytes(bytes(range(256)))
        assert (await ci.upload_file(source, "dir/b.bin"))["size"] == 256
        assert sorted(e["name"] for e in await ci.list_files("/workspace/dir")) == ["a.txt", "b.bin"]
        assert await ci.read_file("dir/a.txt") == b"text"
        target = tmp_path / "out" / "b.bin"
        assert await ci.download_file("dir/b.bin", target) == str(target)
        assert target.read_bytes() == bytes(range(256))
        with pytest.raises(RemoteFileNotFound):
            await ci.read_file("dir/missing")


async def test_timeout_and_interrupt_keep_the_session(connect):
    async with AsyncCodeInterpreterClient(**connect) as ci:
        await ci.run_code("z = 'kept'")
        with pytest.raises(ExecutionTimeout) as stopped:
            await ci.run_code("import time; time.sleep(30)", timeout=1)
        assert stopped.value.execution.error.name == "KeyboardInterrupt"
        started = asyncio.Event()
        running = asyncio.ensure_future(ci.run_code("import time\nprint('go', flush=True)\ntime.sleep(30)",
                                                    on_stdout=lambda text: started.set()))
        await asyncio.wait_for(started.wait(), 30)
        await ci.interrupt()
        execution = await asyncio.wait_for(running, 30)
        assert execution.error.name == "KeyboardInterrupt"
        assert (await ci.run_code("z")).text == "'kept'"


async def test_errors_lazy_sessions_reattach_and_close(connect, gateway):
    async with AsyncCodeInterpreterClient(**connect, session_id="no-such-session") as ghost:
        with pytest.raises(SessionNotFound, match="no-such-session"):
            await ghost.run_code("1")
    with pytest.raises(AuthenticationError, match="token"):
        async with AsyncCodeInterpreterClient(gateway.url, "wrong-token"):
            pass
    lazy = AsyncCodeInterpreterClient(**connect, lazy=True, keep_session=True)
    async with lazy:
        assert lazy.session_id is None
        await lazy.run_code("kept = 1")
    session_id = lazy.session_id
    assert session_id in sessions_on(gateway)  # kept on close
    async with AsyncCodeInterpreterClient(**connect, session_id=session_id) as again:
        assert (await again.run_code("kept + 1")).text == "2"
        assert (await again.info())["template"] == "default"
        assert session_id in [s["session_id"] for s in await again.list_sessions()]
    assert session_id not in sessions_on(gateway)
    started = AsyncCodeInterpreterClient(**connect)
    assert started.session_id is None  # the constructor sends nothing
    assert await started.start() == started.session_id
    await started.close()
    await started.close()
    assert started.session_id not in sessions_on(gateway)
    async with AsyncCodeInterpreterClient(**connect) as ended:
        assert await ended.delete_session() is True and await ended.delete_session() is False
        with pytest.raises(SessionNotFound):
            await ended.run_code("1")
    stopped = AsyncCodeInterpreterClient(**connect)
    await stopped.start()
    await stopped.stop()  # the agentcube-sdk's name
    assert stopped.session_id not in sessions_on(gateway)
