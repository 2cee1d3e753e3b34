"""JSON messages, with descriptors beside them, over SOCK_SEQPACKET socket pairs: the gateway's
channels to its zygotes and to each sandbox's PicoD. A message boundary is a packet boundary,
so a message is never half-read, and the sockets have no path anyone could connect to."""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket


def pair() -> tuple[socket.socket, socket.socket]:
    """(ours, theirs): ours non-blocking for the loop; theirs to pass to a child process."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """Never blocks: the peers answer one request at a time, so the buffer cannot be full."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([json.dumps(message).encode()], ancillary)


async def receive(sock: socket.socket, max_bytes: int, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """The next message (None at end of file) and the descriptors that came with it. A message
    too large, or with more descriptors than expected, is refused: ValueError (its descriptors
    closed)."""
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, max_bytes, max(max_fds, 1))
            break
        except (BlockingIOError, InterruptedError):
            await readable(sock)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) > max_fds:
        close_all(fds)
        raise ValueError("a message too large, or with unexpected descriptors")
    if not data:
        close_all(fds)
        return None, []
    try:
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        close_all(fds)
        raise ValueError(f"an unreadable message: {exc}") from None
    return message, fds


async def readable(fd) -> None:
    """Until the descriptor (or socket) has something to read, or its end of file."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
