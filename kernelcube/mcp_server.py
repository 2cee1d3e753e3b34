"""`kernelcube-mcp`: an MCP server whose tools run code in a KernelCube session (needs `mcp`).

Tools: `run_code`, `execute_command`, `write_file`, `read_file`, `list_files`, `stop_session`.
The server keeps one KernelCube session, created on first use, so variables and files persist
from one tool call to the next; `stop_session` ends it (the next call starts a fresh one). A
session that ended behind the server's back (reaped after its idle timeout, or its sandbox
gone) is replaced once, and the answer says so. Images (matplotlib plots) come back as MCP image
content.

    kernelcube-mcp                                   # stdio, for an MCP host
    kernelcube-mcp --transport streamable-http --port 8765

The gateway is `--url`/`KERNELCUBE_URL`, its token `KERNELCUBE_TOKEN` (not an option, so it
stays out of process listings). Over HTTP the server has no authentication of its own: it
listens on 127.0.0.1 unless told otherwise, and every client shares its one session.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import Image, MCPServer
from mcp_types import ImageContent, TextContent

from . import _summary
from .aio import AsyncCodeInterpreterClient
from .errors import ExecutionTimeout, KernelCubeError, SandboxGone, SessionNotFound

T = TypeVar("T")
INSTRUCTIONS = (
    "Run Python and shell commands in an isolated KernelCube sandbox (no network). The Python kernel "
    "is persistent: variables, imports and files stay between calls. Files live in the sandbox's "
    "workspace, the kernel's working directory."
)
MAX_READ = 1024 * 1024  # bytes of a binary file shown as base64


class KernelCubeSession:
    """The server's one session on the gateway, replaced once when it ended under us."""

    def __init__(self, url: str | None, token: str | None, template: str | None):
        self.client = AsyncCodeInterpreterClient(url, token, template=template, lazy=True)

    async def call(self, action: Callable[[AsyncCodeInterpreterClient], Awaitable[T]]) -> tuple[T, str]:
        """(what `action` returned, a note for the answer: empty, or that the session was replaced)."""
        fresh = self.client.session_id is None
        try:
            return await action(self.client), ""
        except (SessionNotFound, SandboxGone) as exc:
            if fresh:
                raise
            previous = self.client.session_id
            self.client.session_id = None
            await self.client.start()
            note = (f"[session {previous} had ended ({exc.message}); started session {self.client.session_id}: "
                    "variables and files from before are gone]")
            return await action(self.client), note

    async def stop(self) -> str:
        if self.client.session_id is None:
            return "no session was running"
        previous = self.client.session_id
        await self.client.delete_session()
        self.client.session_id = None
        return f"session {previous} ended; the next call starts a new one"

    async def close(self) -> None:
        await self.client.close()


def _text(*parts: str) -> TextContent:
    return TextContent(type="text", text="\n".join(p for p in parts if p))


def _failure(exc: KernelCubeError, note: str = "") -> list[TextContent]:
    return [_text(note, f"KernelCube error: {exc.message}")]


def build_server(url: str | None = None, token: str | None = None, template: str | None = None) -> MCPServer:
    """The MCP server, its tools bound to one KernelCube session (created on first use)."""
    session = KernelCubeSession(url, token, template)

    @contextlib.asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(KernelCubeError):
                await session.close()

    server = MCPServer("kernelcube", instructions=INSTRUCTIONS, lifespan=lifespan)

    @server.tool()
    async def run_code(code: str, language: str = "python", timeout_seconds: float | None = None) -> list[Any]:
        """Run code in the persistent sandbox: `python` in a live Jupyter kernel (variables persist;
        the last expression's value is returned, plots come back as images) or `bash`."""
        try:
            execution, note = await session.call(lambda c: c.run_code(code, language, timeout=timeout_seconds))
        except ExecutionTimeout as exc:
            partial = _summary.execution_text(exc.execution) if exc.execution else ""
            return [_text(exc.message, partial)]
        except KernelCubeError as exc:
            return _failure(exc)
        content: list[Any] = [_text(note, _summary.execution_text(execution))]
        for mime, data in _summary.images(execution):
            content.append(Image(data=data, format=mime.split("/")[1]).to_image_content())
        return content

    @server.tool()
    async def execute_command(command: str, timeout_seconds: float | None = None) -> list[Any]:
        """Run a shell command (bash: pipes, `&&` and redirections work) in the sandbox's workspace;
        returns its stdout, and its stderr and exit code when it fails."""
        try:
            result, note = await session.call(lambda c: c.execute_command_result(command, timeout=timeout_seconds))
        except KernelCubeError as exc:
            return _failure(exc)
        if result.exit_code == 0:
            return [_text(note, result.stdout or "[no output]")]
        return [_text(note, result.stdout, f"exit code {result.exit_code}", f"stderr:\n{result.stderr}")]

    @server.tool()
    async def write_file(path: str, content: str) -> list[Any]:
        """Write text to a file in the sandbox's workspace (directories are created)."""
        try:
            info, note = await session.call(lambda c: c.write_file(content, path))
        except KernelCubeError as exc:
            return _failure(exc)
        return [_text(note, f"wrote {info.get('size')} bytes to {info.get('path')}")]

    @server.tool()
    async def read_file(path: str) -> list[Any]:
        """Read a file from the sandbox's workspace: text as text, a PNG or JPEG as an image."""
        try:
            data, note = await session.call(lambda c: c.read_file(path))
        except KernelCubeError as exc:
            return _failure(exc)
        if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
            image = ImageContent(type="image", data=base64.b64encode(data).decode(),
                                 mime_type="image/png" if data[:1] == b"\x89" else "image/jpeg")
            return [_text(note), image] if note else [image]
        try:
            return [_text(note, data.decode("utf-8"))]
        except UnicodeDecodeError:
            shown = base64.b64encode(data[:MAX_READ]).decode()
            more = f" (the first {MAX_READ} shown)" if len(data) > MAX_READ else ""
            return [_text(note, f"binary file, {len(data)} bytes{more}, base64:", shown)]

    @server.tool()
    async def list_files(path: str = ".") -> list[Any]:
        """List a directory of the sandbox's workspace: one entry per line (name, size, kind)."""
        try:
            entries, note = await session.call(lambda c: c.list_files(path))
        except KernelCubeError as exc:
            return _failure(exc)
        lines = [f"{e['name']}{'/' if e.get('is_dir') else ''}\t{e.get('size', 0)} bytes" for e in entries]
        return [_text(note, "\n".join(lines) or "[empty directory]")]

    @server.tool()
    async def stop_session() -> list[Any]:
        """End the sandbox session (its variables and files are discarded); the next call starts a new one."""
        try:
            return [_text(await session.stop())]
        except KernelCubeError as exc:
            return _failure(exc)

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kernelcube-mcp", description="An MCP server running code in KernelCube. "
                                     "The gateway token is read from KERNELCUBE_TOKEN.")
    parser.add_argument("--url", help="the KernelCube gateway (default: KERNELCUBE_URL)")
    parser.add_argument("--template", help="the code-interpreter template of the session (default: 'default')")
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http: address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="streamable-http: port to listen on")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        server = build_server(args.url, None, args.template)
    except ValueError as exc:
        parser.error(str(exc))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
