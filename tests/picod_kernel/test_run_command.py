"""The command runner without HTTP: process-group kill on timeout and on cancel, the grace
period for pipes held by grandchildren, output caps, exit codes, the private environment."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from picod_kernel.execute import TIMEOUT_EXIT_CODE, child_environment, run_command


async def run(argv, timeout=10.0, cwd=None, env=None, max_output=1 << 20):
    return await run_command(argv, timeout=timeout, cwd=cwd or os.getcwd(),
                             env=env or child_environment(None), max_output=max_output)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.asyncio
async def test_exit_code_and_output():
    result = await run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert result.end_time >= result.start_time and result.duration >= 0


@pytest.mark.asyncio
async def test_timeout_kills_whole_group_and_returns_promptly(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    result = await run(["sh", "-c", f"sleep 600 & echo $! > {pidfile}; echo partial; sleep 600; true"], timeout=1)
    assert time.monotonic() - started < 3
    assert result.exit_code == TIMEOUT_EXIT_CODE
    assert result.stdout == "partial\n"
    assert result.stderr == "Command timed out after 1 seconds"
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not alive(grandchild):
            break
        await asyncio.sleep(0.05)
    assert not alive(grandchild), "the backgrounded sleep survived the timeout"


@pytest.mark.asyncio
@pytest.mark.parametrize(("timeout", "shown"), [(0, "0"), (-1, "-1")])
async def test_zero_or_negative_timeout_never_starts(tmp_path, timeout, shown):
    marker = tmp_path / "ran"
    result = await run(["touch", str(marker)], timeout=timeout)
    assert result.exit_code == 124 and result.stderr == f"Command timed out after {shown} seconds"
    assert not marker.exists()


@pytest.mark.asyncio
async def test_rounding_half_to_even_in_timeout_message():
    result = await run(["sleep", "5"], timeout=0.5)
    assert result.stderr.endswith("Command timed out after 0 seconds")


@pytest.mark.asyncio
async def test_pipes_held_by_grandchild_do_not_hang_the_reply():
    started = time.monotonic()
    result = await run(["sh", "-c", "sleep 600 & echo done"], timeout=30)
    assert time.monotonic() - started < 3
    assert (result.exit_code, result.stdout) == (0, "done\n")


@pytest.mark.asyncio
async def test_cancel_kills_group(tmp_path):
    pidfile = tmp_path / "pid"
    task = asyncio.ensure_future(run(["sh", "-c", f"echo $$ > {pidfile}; sleep 600"], timeout=600))
    while not pidfile.exists() or not pidfile.read_text().strip():  # noqa: ASYNC110 -- a file, not an event
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(pid)


@pytest.mark.asyncio
async def test_cannot_start_answers_exit_1():
    result = await run(["definitely-not-a-command-xyz"])
    assert result.exit_code == 1 and "definitely-not-a-command-xyz" in result.stderr
    result = await run(["/etc/hostname"])
    assert result.exit_code == 1 and "/etc/hostname" in result.stderr


@pytest.mark.asyncio
async def test_killed_by_signal_is_minus_one():
    result = await run(["sh", "-c", "kill -9 $$"])
    assert result.exit_code == -1


@pytest.mark.asyncio
async def test_output_cap_truncates_with_marker():
    result = await run(["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero >&2"],
                       max_output=1000)
    assert result.stdout == "a" * 1000
    assert "[picod: stdout truncated: 4000 bytes beyond the 1000-byte cap were dropped]" in result.stderr
    assert "[picod: stderr truncated: 2000 bytes" in result.stderr


@pytest.mark.asyncio
async def test_invalid_utf8_is_replaced():
    result = await run(["printf", "\\377ok"])
    assert result.stdout == "\ufffdok"


def test_child_environment_drops_private_variables():
    base = {"PATH": "/bin", "PICOD_AUTH_PUBLIC_KEY": "k", "PICOD_SANDBOX_ID": "s", "KERNELCUBE_X": "x", "LANG": "C"}
    env = child_environment({"LANG": "C.UTF-8", "NEW": "1"}, base)
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "NEW": "1"}
