"""What an execution returns: `Execution`, its `Result`s (one MIME bundle each), `Logs` and
`ExecutionError`, shaped like the E2B code interpreter's so that code written for it reads the
same; and `ExecutionBuilder`, which assembles an Execution from the NDJSON event stream."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

BINARY_MIME = ("image/png", "image/jpeg", "application/pdf")


@dataclass
class Result:
    """One rich output (an `execute_result` or a `display_data`): a MIME bundle.

    `text`, `html`, `markdown`, `svg`, `png`, `jpeg`, `pdf`, `latex`, `json`, `javascript` are the
    bundle's entries (None when absent; images base64-encoded, as Jupyter sends them); `data` is
    the whole bundle, `{mime type: value}`. `is_main_result` is true for the cell's value."""

    data: dict[str, Any]
    is_main_result: bool = False

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> Result:
        data = {k: v for k, v in bundle.items() if k not in ("is_main_result", "type")}
        return cls(data=data, is_main_result=bool(bundle.get("is_main_result")))

    def _get(self, mime: str) -> Any:
        return self.data.get(mime)

    text = property(lambda self: self._get("text/plain"))
    html = property(lambda self: self._get("text/html"))
    markdown = property(lambda self: self._get("text/markdown"))
    svg = property(lambda self: self._get("image/svg+xml"))
    png = property(lambda self: self._get("image/png"))
    jpeg = property(lambda self: self._get("image/jpeg"))
    pdf = property(lambda self: self._get("application/pdf"))
    latex = property(lambda self: self._get("text/latex"))
    json = property(lambda self: self._get("application/json"))
    javascript = property(lambda self: self._get("application/javascript"))

    def formats(self) -> list[str]:
        """The MIME types this result carries."""
        return list(self.data)

    def decode(self, mime: str = "image/png") -> bytes:
        """The decoded content of one MIME type (base64 for images and PDF, text otherwise)."""
        value = self.data.get(mime)
        if value is None:
            raise KeyError(f"this result has no {mime!r} (it has {', '.join(self.data) or 'nothing'})")
        if mime in BINARY_MIME:
            return base64.b64decode(value)
        return value.encode() if isinstance(value, str) else json.dumps(value).encode()

    def __str__(self) -> str:
        return self.text or ", ".join(self.data)


@dataclass
class Logs:
    """Output streams as the chunks the kernel sent (one chunk each without streaming)."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class ExecutionError:
    """The code raised: exception `name`, its `value` and the `traceback` as one string."""

    name: str
    value: str
    traceback: str

    @classmethod
    def from_wire(cls, error: dict[str, Any]) -> ExecutionError:
        traceback = error.get("traceback") or []
        if isinstance(traceback, list):
            traceback = "\n".join(str(line) for line in traceback)
        return cls(name=str(error.get("name", "")), value=str(error.get("value", "")), traceback=traceback)

    def __str__(self) -> str:
        return f"{self.name}: {self.value}" if self.value else self.name


@dataclass
class Execution:
    """One `run_code`: its results, logs, error and the kernel's execution count.

    `status` is "ok", "error", "timeout" or "dead" (the kernel died, e.g. out of memory, and was
    restarted: its variables are lost). `exit_code` is set for `bash`."""

    session_id: str | None = None
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    status: str = "ok"
    duration_ms: float | None = None
    exit_code: int | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Execution:
        return cls(session_id=body.get("session_id"),
                   results=[Result.from_bundle(r) for r in body.get("results") or []],
                   logs=Logs(stdout=[body["stdout"]] if body.get("stdout") else [],
                             stderr=[body["stderr"]] if body.get("stderr") else []),
                   error=ExecutionError.from_wire(body["error"]) if body.get("error") else None,
                   execution_count=body.get("execution_count"), status=body.get("status", "ok"),
                   duration_ms=body.get("duration_ms"), exit_code=body.get("exit_code"))

    @property
    def stdout(self) -> str:
        return "".join(self.logs.stdout)

    @property
    def stderr(self) -> str:
        return "".join(self.logs.stderr)

    @property
    def text(self) -> str | None:
        """The text of the main result (the cell's value), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        """What a notebook would show: the output, then the value, then the error (so printing
        an Execution prints what the agentcube-sdk's `run_code` returned, and more)."""
        parts = [self.stdout, self.stderr]
        if self.text is not None:
            parts.append(self.text + "\n")
        if self.error is not None:
            parts.append(f"{self.error}\n")
        return "".join(parts).rstrip("\n")


class ExecutionBuilder:
    """Feed it the NDJSON events of one execution, in order; `execution` is the result so far.
    Events: start, stdout, stderr, result, error, clear, end."""

    def __init__(self) -> None:
        self.execution = Execution()
        self.ended = False

    def feed(self, event: dict[str, Any]) -> Any:
        """Apply one event; returns what a callback is given (text, Result or ExecutionError)."""
        kind = event.get("type")
        ex = self.execution
        if kind == "start":
            ex.session_id = event.get("session_id", ex.session_id)
            ex.execution_count = event.get("execution_count", ex.execution_count)
        elif kind in ("stdout", "stderr"):
            text = event.get("text", "")
            getattr(ex.logs, kind).append(text)
            return text
        elif kind == "result":
            result = Result.from_bundle(event)
            ex.results.append(result)
            return result
        elif kind == "error":
            error = ExecutionError.from_wire(event)
            repeated = ex.error is not None and (ex.error.name, ex.error.value) == (error.name, error.value)
            ex.error = error
            # The kernel reports an error twice (its iopub message and its reply); when the reply
            # comes first the stream can carry both: a callback hears of it once.
            return None if repeated else error
        elif kind == "clear":
            ex.logs = Logs()
            ex.results = []
        elif kind == "end":
            self.ended = True
            ex.status = event.get("status", ex.status)
            ex.duration_ms = event.get("duration_ms")
            if event.get("execution_count") is not None:
                ex.execution_count = event["execution_count"]
            if "exit_code" in event:
                ex.exit_code = event["exit_code"]
        return None


@dataclass
class CommandResult:
    """A command's outcome without raising (`execute_command_result`)."""

    stdout: str
    stderr: str
    exit_code: int
