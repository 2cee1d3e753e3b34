"""Turn a kernel's replies to one execute_request into an Execution or a stream of events.

Execution JSON: {execution_count, status: ok|error|timeout|dead, stdout, stderr,
results: [{<mime>: data, ..., is_main_result}], error: {name, value, traceback} | null,
duration_ms}. Events (NDJSON, one per line): start, stdout, stderr, result, error, end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EventSink = Callable[[dict], None]
DEFAULT_MAX_OUTPUT = 32 * 1024 * 1024  # bytes per stream (and of rich results) per execution


def _discard(event: dict) -> None:
    pass


class ExecutionCollector:
    """Fed the iopub and shell messages whose parent is one execute_request, in arrival order."""

    def __init__(self, on_event: EventSink | None = None, max_output: int = DEFAULT_MAX_OUTPUT):
        self.on_event = on_event or _discard
        self.max_output = max_output
        # bytes kept and dropped per stream ("stdout", "stderr") and for rich results ("results")
        self.kept = {"stdout": 0, "stderr": 0, "results": 0}
        self.dropped = {"stdout": 0, "stderr": 0, "results": 0}
        self.started = time.perf_counter()
        self.execution_count: int | None = None
        self.status = "ok"
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.results: list[dict] = []
        self.error: dict | None = None
        self.idle = False
        self.replied = False
        self._start_sent = False
        # The reply's error, told only if iopub never tells it: the reply may arrive before
        # iopub's output and error, and an error event must come once, after the output.
        self._reply_error: tuple[str, str, list[str]] | None = None

    @property
    def done(self) -> bool:
        return self.idle and self.replied

    def _start(self) -> None:
        if not self._start_sent:
            self._start_sent = True
            self.on_event({"type": "start", "execution_count": self.execution_count})

    def iopub(self, msg: dict) -> None:
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "status":
            if content.get("execution_state") == "idle":
                self.idle = True
            return
        if kind == "execute_input":
            self.execution_count = content.get("execution_count")
            self._start()
            return
        self._start()
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            text = self._within_cap(name, content.get("text", ""))
            if text:
                (self.stderr if name == "stderr" else self.stdout).append(text)
                self.on_event({"type": name, "text": text})
        elif kind in ("execute_result", "display_data", "update_display_data"):
            result = dict(content.get("data", {}))
            size = sum(len(str(value)) for value in result.values())
            if self.kept["results"] + size > self.max_output:
                self.dropped["results"] += size
                return
            self.kept["results"] += size
            result["is_main_result"] = kind == "execute_result"
            self.results.append(result)
            self.on_event({"type": "result", **result})
        elif kind == "error":
            self.set_error(content.get("ename", "Error"), content.get("evalue", ""),
                           content.get("traceback", []))
        elif kind == "clear_output" and not content.get("wait"):
            self.stdout.clear()
            self.stderr.clear()
            self.results.clear()
            self.on_event({"type": "clear"})

    def _within_cap(self, name: str, text: str) -> str:
        """The part of `text` that still fits this stream's cap; the rest is counted as dropped."""
        data = text.encode("utf-8", "surrogatepass")
        room = self.max_output - self.kept[name]
        if len(data) <= room:
            self.kept[name] += len(data)
            return text
        self.dropped[name] += len(data) - max(room, 0)
        if room <= 0:
            return ""
        self.kept[name] = self.max_output
        return data[:room].decode("utf-8", "ignore")

    def _truncation_notes(self) -> str:
        return "".join(f"\n[picod: {name} truncated: {count} bytes beyond the {self.max_output}-byte cap "
                       "were dropped]" for name, count in self.dropped.items() if count)

    def shell(self, msg: dict) -> None:
        content = msg["content"]
        self.replied = True
        if self.execution_count is None:
            self.execution_count = content.get("execution_count")
        if content.get("status") == "error" and self.status == "ok":
            self.status = "error"
            self._reply_error = (content.get("ename", "Error"), content.get("evalue", ""),
                                 content.get("traceback", []))
        elif content.get("status") == "aborted" and self.status == "ok":
            self.status = "error"
            self.set_error("ExecutionAborted", "the kernel aborted this execution", [])

    def set_error(self, name: str, value: str, traceback: list[str]) -> None:
        self._start()
        self.error = {"name": name, "value": value, "traceback": list(traceback)}
        if self.status == "ok":
            self.status = "error"
        self.on_event({"type": "error", **self.error})

    def finish(self, status: str | None = None) -> dict:
        """Close the execution; `status` overrides (timeout, dead). Emits the end event."""
        if status is not None:
            self.status = status
        if self.error is None and self._reply_error is not None:
            self.set_error(*self._reply_error)
        self._start()
        notes = self._truncation_notes()
        if notes:
            self.stderr.append(notes)
            self.on_event({"type": "stderr", "text": notes})
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        self.on_event({"type": "end", "status": self.status, "execution_count": self.execution_count,
                       "duration_ms": duration_ms})
        return {
            "execution_count": self.execution_count,
            "status": self.status,
            "stdout": "".join(self.stdout),
            "stderr": "".join(self.stderr),
            "results": self.results,
            "error": self.error,
            "duration_ms": duration_ms,
        }
