"""Building an Execution from NDJSON events (pure logic, no server): the order of events, a
`clear`, the end event's status and exit code, and an error the stream repeats (the kernel's
reply can precede its iopub error under load; seen against a real gateway) reaching the
callback once."""

from __future__ import annotations

import base64

from kernelcube.models import Execution, ExecutionBuilder, Result


def feed_all(events: list[dict]) -> tuple[Execution, list]:
    builder = ExecutionBuilder()
    handed = [value for value in map(builder.feed, events) if value is not None]
    assert builder.ended
    return builder.execution, handed


def test_events_make_the_execution():
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    execution, handed = feed_all([
        {"type": "start", "execution_count": 3, "session_id": "s"},
        {"type": "stdout", "text": "a"}, {"type": "stderr", "text": "w"}, {"type": "stdout", "text": "b\n"},
        {"type": "result", "image/png": png, "text/plain": "<Figure>", "is_main_result": False},
        {"type": "result", "text/plain": "42", "is_main_result": True},
        {"type": "end", "status": "ok", "execution_count": 3, "duration_ms": 5.0}])
    assert (execution.session_id, execution.execution_count, execution.status) == ("s", 3, "ok")
    assert execution.logs.stdout == ["a", "b\n"] and execution.stdout == "a" + "b\n" and execution.stderr == "w"
    assert execution.text == "42" and execution.results[0].decode() == b"\x89PNG\r\n\x1a\nrest"
    assert handed[:3] == ["a", "w", "b\n"] and isinstance(handed[3], Result)


def test_clear_resets_output_and_a_repeated_error_is_handed_over_once():
    error = {"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": ["t1", "t2"]}
    execution, handed = feed_all([
        {"type": "start", "execution_count": 1}, {"type": "stdout", "text": "old"}, {"type": "clear"},
        error, {"type": "stdout", "text": "new"}, error,
        {"type": "end", "status": "error", "execution_count": 1, "duration_ms": 1.0}])
    assert execution.stdout == "new" and execution.status == "error"
    assert [str(e) for e in handed if not isinstance(e, str)] == ["ZeroDivisionError: division by zero"]
    assert execution.error.traceback == "t1\nt2"


def test_a_bash_stream_carries_its_exit_code():
    execution, _ = feed_all([{"type": "start", "execution_count": None}, {"type": "stderr", "text": "no\n"},
                             {"type": "end", "status": "error", "exit_code": 2, "duration_ms": 3.0}])
    assert execution.exit_code == 2 and execution.execution_count is None and execution.stderr == "no\n"
