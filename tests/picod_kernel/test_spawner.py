"""Commands started by the spawner's threads while others run: the same results as on the loop,
start failures worded alike, and a command whose request went away while a thread was still
starting it is killed once it has started."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from picod_kernel.execute import child_environment, run_command
from picod_kernel.spawner import Spawner

from .test_run_command import alive


class CountingSpawner(Spawner):
    """Counts the commands handed to its threads; with a `gate`, holds them until it opens."""

    def __init__(self, threads: int = 4):
        super().__init__(threads)
        self.handed = 0
        self.gate: threading.Event | None = None
        self.held: list[asyncio.Future] = []

    def start(self, argv, close_after, **popen_kwargs):
        self.handed += 1
        if self.gate is None:
            return super().start(argv, close_after, **popen_kwargs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.held.append(future)
        threading.Thread(target=self._held, args=(self.gate, loop, future, argv, close_after, popen_kwargs),
                         daemon=True).start()
        return future

    def _held(self, gate, loop, future, argv, close_after, popen_kwargs):
        gate.wait(10)
        self._queue.put((loop, future, argv, close_after, popen_kwargs))


@pytest.fixture
def spawner():
    counting = CountingSpawner()
    yield counting
    counting.stop()


async def run(argv, spawner, timeout=10.0):
    return await run_command(argv, timeout=timeout, cwd=os.getcwd(), env=child_environment(None),
                             max_output=1 << 20, spawner=spawner)


@pytest.mark.asyncio
async def test_concurrent_commands_through_threads_give_the_same_results(spawner):
    results = await asyncio.gather(*(run(["sh", "-c", f"echo out{i}; echo err{i} >&2; exit {i % 4}"], spawner)
                                     for i in range(40)))
    for i, result in enumerate(results):
        assert (result.stdout, result.stderr, result.exit_code) == (f"out{i}\n", f"err{i}\n", i % 4)
    assert spawner.handed > 0, "no command went through a thread"
    assert spawner.active == 0


@pytest.mark.asyncio
async def test_a_lone_command_starts_on_the_loop(spawner):
    for _ in range(3):
        assert (await run(["true"], spawner)).exit_code == 0
    assert spawner.handed == 0


@pytest.mark.asyncio
async def test_start_failure_through_a_thread_is_worded_as_on_the_loop(spawner):
    inline = await run(["definitely-not-a-command-xyz"], None)
    background = asyncio.ensure_future(run(["sleep", "1"], spawner))
    await asyncio.sleep(0.1)  # one command in flight: the next goes through a thread
    threaded = await run(["definitely-not-a-command-xyz"], spawner)
    assert spawner.handed == 1
    assert (threaded.exit_code, threaded.stderr) == (inline.exit_code, inline.stderr)
    assert (await background).exit_code == 0


@pytest.mark.asyncio
async def test_cancelled_while_a_thread_starts_it_the_command_is_killed(spawner):
    gate = threading.Event()
    background = asyncio.ensure_future(run(["sleep", "5"], spawner))
    await asyncio.sleep(0.1)
    spawner.gate = gate  # the next start waits for the gate
    task = asyncio.ensure_future(run(["sleep", "600"], spawner))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()  # now the thread starts it; nobody waits for it any more
    proc = await asyncio.wait_for(asyncio.shield(spawner.held[0]), 10)
    for _ in range(100):
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert proc.returncode == -9, "the abandoned command was not killed and reaped"
    assert not alive(proc.pid)
    background.cancel()
    with pytest.raises(asyncio.CancelledError):
        await background


def test_without_threads_every_command_starts_on_the_loop():
    spawner = Spawner(threads=0)
    spawner.active = 5
    assert not spawner.should_wait_for()
