"""The execution collector's event order when the kernel's reply overtakes its iopub output
(it does under load: shell and iopub are separate sockets): the error is told once, after the
output; and when iopub never tells it, the reply's error still is."""

from __future__ import annotations

from picod_kernel.execution import ExecutionCollector

ERROR = {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["tb"]}


def reply(status: str = "error") -> dict:
    return {"content": {"status": status, "execution_count": 3, **(ERROR if status == "error" else {})}}


def iopub(msg_type: str, **content) -> dict:
    return {"header": {"msg_type": msg_type}, "msg_type": msg_type, "content": content}


def test_a_reply_before_the_output_still_tells_the_error_once_and_last():
    events = []
    collector = ExecutionCollector(events.append)
    collector.shell(reply())
    collector.iopub(iopub("stream", name="stdout", text="before the error\n"))
    collector.iopub(iopub("error", **ERROR))
    collector.iopub(iopub("status", execution_state="idle"))
    result = collector.finish()
    assert [e["type"] for e in events] == ["start", "stdout", "error", "end"]
    assert result["status"] == "error" and result["error"]["name"] == "ZeroDivisionError"


def test_the_reply_error_is_told_when_iopub_lost_it():
    events = []
    collector = ExecutionCollector(events.append)
    collector.iopub(iopub("stream", name="stdout", text="out\n"))
    collector.shell(reply())
    result = collector.finish()
    assert [e["type"] for e in events] == ["start", "stdout", "error", "end"]
    assert result["error"] == {"name": "ZeroDivisionError", "value": "division by zero", "traceback": ["tb"]}
