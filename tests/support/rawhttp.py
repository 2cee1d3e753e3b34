"""A raw keep-alive HTTP/1.1 connection for tests that need what HTTP clients hide: sending
headers before the body (`Expect: 100-continue`), seeing `Connection: close` and the server's
end of the connection."""

from __future__ import annotations

import asyncio


class Connection:
    """One raw keep-alive HTTP/1.1 connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def send_head(self, method: str, path: str, headers: dict | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict, bytes]:
        return await asyncio.wait_for(self._response(), 60)

    async def _response(self) -> tuple[int, dict, bytes]:
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        size = 0 if status == 100 else int(headers.get("content-length", "0"))
        return status, headers, await self.reader.readexactly(size)

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 60) == b""

    def close(self) -> None:
        self.writer.close()
