"""The KernelCube code-interpreter tool, with the parameters of AgentCube's Dify tool.

It runs `command` (if given), then `code` (if given), in one session: a new one, or
`session_id`'s. The session ends after the call unless `session_reuse`. One JSON message
answers, in AgentCube's shape (`status`, `session_id`, `code_interpreter_id`, `results`, or
`status: error` and `reason`); each image the code displayed follows as a PNG/JPEG file.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from kernelcube import CodeInterpreterClient, KernelCubeError
from kernelcube._summary import execution_text, images


class KernelCubeCodeInterpreterTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        params = {k: v for k, v in tool_parameters.items() if v is not None and v != ""}
        code, command = params.get("code"), params.get("command")
        template = params.get("code_interpreter_id") or "default"
        reuse = bool(params.get("session_reuse", False))
        url = (params.get("router_url") or params.get("workload_manager_url")
               or self.runtime.credentials.get("kernelcube_url"))
        if not url:
            yield self.create_json_message({"status": "error", "reason": "no gateway URL: set the provider's "
                                            "Gateway URL (or this tool's router_url)"})
            return
        if not code and not command:
            yield self.create_json_message({"status": "error", "reason": "Either command or code must be provided"})
            return
        client = None
        results: list[dict[str, Any]] = []
        pictures: list[tuple[str, bytes]] = []
        try:
            client = CodeInterpreterClient(url, self.runtime.credentials.get("kernelcube_token") or "",
                                           template=template, session_id=params.get("session_id"),
                                           keep_session=reuse)
            if command:
                outcome = client.execute_command_result(command)
                results.append({"type": "command", "result": outcome.stdout, "stderr": outcome.stderr,
                                "exit_code": outcome.exit_code})
                if outcome.exit_code != 0:
                    raise _Failed(f"command exited with {outcome.exit_code}: {outcome.stderr.strip()[-2000:]}")
            if code:
                execution = client.run_code(code, params.get("language", "python"))
                pictures = images(execution)
                results.append({"type": "code", "result": execution_text(execution), "stdout": execution.stdout,
                                "stderr": execution.stderr, "execution_count": execution.execution_count,
                                "images": len(pictures),
                                "error": None if execution.error is None else {
                                    "name": execution.error.name, "value": execution.error.value,
                                    "traceback": execution.error.traceback}})
                if execution.error is not None:
                    raise _Failed(f"{execution.error.name}: {execution.error.value}")
        except (KernelCubeError, ValueError, _Failed) as exc:
            session_id = client.session_id if client is not None and reuse else None
            yield self.create_json_message({"status": "error", "reason": str(exc), "session_id": session_id,
                                            "code_interpreter_id": template, "results": results})
        else:
            yield self.create_json_message({"status": "success",
                                            "session_id": client.session_id if reuse else None,
                                            "code_interpreter_id": template, "results": results})
        finally:
            if client is not None:
                try:
                    client.close()
                except KernelCubeError:
                    pass  # the session is reaped after its idle timeout anyway
        for index, (mime, data) in enumerate(pictures, 1):
            extension = "png" if mime == "image/png" else "jpg"
            yield self.create_blob_message(data, meta={"mime_type": mime, "filename": f"output-{index}.{extension}"})


class _Failed(Exception):
    """The command or the code failed: reported as AgentCube's tool reports it, status error."""
