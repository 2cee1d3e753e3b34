"""A small HTTP/1.1 client for daemon benchmarks: the same bytes for every server measured.

`closed_loop` keeps N keep-alive connections busy (each sends its next request as soon as the
last answer is in) for a fixed time and counts answers; a protocol per connection, no parsing
beyond the status line and Content-Length, so the client costs little next to the server.
`wait_for_status` polls one path from the moment a process is started until it answers.
"""

from __future__ import annotations

import asyncio
import socket
import time


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, deadline: float, done: asyncio.Future):
        self.request, self.deadline, self.done = request, deadline, done
        self.buffer = bytearray()
        self.count = 0
        self.errors = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
            length = next((int(line.split(":", 1)[1]) for line in head[1:]
                           if line.lower().startswith("content-length:")), None)
            if length is None:
                self._finish(RuntimeError(f"an answer without Content-Length: {head}"))
                return
            if len(self.buffer) < head_end + 4 + length:
                return
            del self.buffer[:head_end + 4 + length]
            if head[0].split(" ", 2)[1] == "200":
                self.count += 1
            else:
                self.errors += 1
            if time.perf_counter() >= self.deadline:
                self._finish(None)
                return
            self.transport.write(self.request)

    def connection_lost(self, exc) -> None:
        self._finish(exc or RuntimeError("the server closed the connection"))

    def _finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        self.transport.close()


def closed_loop(port: int, request: bytes, clients: int, seconds: float) -> tuple[float, int]:
    """(answers with 200 per second, other answers) over `seconds`, `clients` connections."""

    async def run() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = started + seconds
        connections = []
        for _ in range(clients):
            done = loop.create_future()
            _, proto = await loop.create_connection(lambda d=done: _Connection(request, deadline, d),
                                                    "127.0.0.1", port)
            connections.append(proto)
        await asyncio.gather(*(c.done for c in connections))
        elapsed = time.perf_counter() - started
        return sum(c.count for c in connections) / elapsed, sum(c.errors for c in connections)

    return asyncio.run(run())


def wait_for_status(port: int, path: str, status: int, started: float, timeout: float) -> float:
    """Seconds from `started` (a perf_counter) until GET `path` answers `status`."""
    request = request_bytes("GET", path, {})
    expected = f" {status} ".encode()
    while time.perf_counter() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                head = sock.recv(64)
                if head[8:8 + len(expected)] == expected:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.001)
    raise TimeoutError(f"GET {path} did not answer {status} within {timeout}s")
