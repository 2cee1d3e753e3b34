"""A LangChain tool that runs Python in a KernelCube session (needs `langchain-core`).

The session is persistent: variables, imports and files stay between calls, as in a notebook.
The tool returns text: what the code printed, its value and its error, plus one line per
non-text result; images (matplotlib plots) are saved under `output_dir` and the text gives their
paths.

```python
from kernelcube.langchain import KernelCubeCodeTool

tool = KernelCubeCodeTool()              # KERNELCUBE_URL, KERNELCUBE_TOKEN; session on first use
print(tool.invoke({"code": "2 ** 10"}))  # 1024
tool.close()                             # ends the session
```
"""

from __future__ import annotations

import tempfile
import threading
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import _summary
from .client import CodeInterpreterClient
from .errors import ExecutionTimeout, KernelCubeError, SandboxGone, SessionNotFound

DESCRIPTION = (
    "Run Python code in a persistent Jupyter kernel inside an isolated sandbox (no network). "
    "Variables, imports and files persist between calls, so build on earlier results. Returns what "
    "the code printed, the value of its last expression and any error; plots are saved as images and "
    "their paths are given. numpy, pandas and matplotlib are installed."
)


class CodeInput(BaseModel):
    code: str = Field(description="Python code to run; the value of the last line is returned, as in a notebook")


class KernelCubeCodeTool(BaseTool):
    """Runs Python in one KernelCube session, created on first use (or give `client`).

    A session that ended (reaped after its idle timeout, or its sandbox gone) is replaced by a
    new one once, and the text says that earlier variables are lost."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "python"
    description: str = DESCRIPTION
    args_schema: type[BaseModel] = CodeInput
    client: Any = Field(default=None, exclude=True)
    url: str | None = None
    token: str | None = Field(default=None, exclude=True, repr=False)
    template: str | None = None
    timeout: float | None = Field(default=None, description="seconds one execution may run (None: the gateway's default)")
    output_dir: str | None = None
    _owns_client: bool = PrivateAttr(default=False)
    # LangGraph's ToolNode runs a step's tool calls in parallel threads: one client, one session.
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _client(self) -> CodeInterpreterClient:
        with self._lock:
            if self.client is None:
                self.client = CodeInterpreterClient(self.url, self.token, template=self.template, lazy=True)
                self._owns_client = True
            return self.client

    def _output_dir(self) -> str:
        if self.output_dir is None:
            self.output_dir = tempfile.mkdtemp(prefix="kernelcube-images-")
        return self.output_dir

    def _run(self, code: str, run_manager: Any = None) -> str:
        client = self._client()
        note = ""
        try:
            try:
                execution = client.run_code(code, timeout=self.timeout)
            except (SessionNotFound, SandboxGone) as exc:
                previous = client.session_id
                client.session_id = None
                client.start()
                note = (f"[session {previous} had ended ({exc.message}); this ran in a new session "
                        f"{client.session_id}: earlier variables are gone]\n")
                execution = client.run_code(code, timeout=self.timeout)
        except ExecutionTimeout as exc:
            partial = _summary.execution_text(exc.execution) if exc.execution else ""
            return note + f"{exc.message}\n{partial}".rstrip()
        except KernelCubeError as exc:
            return note + f"KernelCube could not run the code: {exc.message}"
        paths = _summary.save_images(execution, self._output_dir()) if _summary.images(execution) else []
        return note + _summary.execution_text(execution, paths)

    def close(self) -> None:
        """End the session the tool created (a client passed in is left to its owner)."""
        if self.client is not None and self._owns_client:
            self.client.close()
            self.client = None
