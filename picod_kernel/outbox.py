"""What one channels connection may hold in memory: the messages on their way to a client.

A client that reads slowly (or never) must not grow PicoD's memory: every frame written counts
as pending until its bytes reach the socket. Above a soft cap, output messages (streams,
displays, results) are dropped, and a marker says how many once the client catches up; status
messages, replies and comms are never dropped, since a client cannot do without them. Above a
hard cap the connection is closed (and its relay parked for a reconnect, when it can be).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import wire

log = logging.getLogger("picod.channels")

MiB = 1024 * 1024
# Output a client can miss: its cell shows a marker instead. Never status, replies or comms.
DROPPABLE = frozenset({"stream", "display_data", "update_display_data", "execute_result", "execute_input"})


@dataclass(frozen=True)
class ChannelLimits:
    """Bounds per client (`--channels-*` flags)."""

    replay_bytes: int = 8 * MiB  # kept for a client that is away, newest first
    replay_messages: int = 10_000
    soft_bytes: int = 8 * MiB  # unflushed bytes above which output is dropped
    hard_bytes: int = 32 * MiB  # unflushed bytes above which the connection is closed

    def check(self) -> ChannelLimits:
        for name in ("replay_bytes", "replay_messages", "soft_bytes", "hard_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--channels-{name.replace('_', '-')} must be positive")
        if self.hard_bytes < self.soft_bytes:
            raise ValueError("--channels-hard-bytes must be at least --channels-soft-bytes")
        return self


@dataclass(frozen=True)
class Outgoing:
    """One message on its way to a client, framed once, with what the bounds need to know."""

    frame: bytes
    binary: bool
    channel: str
    msg_type: str
    parent: dict

    @property
    def size(self) -> int:
        return len(self.frame)

    @property
    def droppable(self) -> bool:
        return self.channel == "iopub" and self.msg_type in DROPPABLE

    @classmethod
    def from_kernel(cls, channel: str, parts: list[bytes]) -> Outgoing:
        """From the kernel's wire parts (signature, header, parent, metadata, content, buffers):
        only the small header and parent are parsed; the content, often large, is copied as the
        kernel serialised it."""
        header, parent = json.loads(parts[1]), json.loads(parts[2])
        msg_type = header.get("msg_type", "")
        ids = json.dumps({"msg_id": header.get("msg_id"), "msg_type": msg_type})[1:-1].encode()
        body = [b'{"header":', parts[1], b",", ids, b',"parent_header":', parts[2], b',"metadata":', parts[3],
                b',"content":', parts[4], b',"channel":"', channel.encode()]
        buffers = parts[5:]
        if buffers:
            return cls(wire.pack_binary(b"".join([*body, b'"}']), buffers), True, channel, msg_type, parent)
        text = b"".join([*body, b'","buffers":[]}'])
        try:
            text.decode()
        except UnicodeDecodeError:  # a text frame must be UTF-8; the kernel escaped a stray byte
            text = text.decode(errors="replace").encode()
        return cls(text, False, channel, msg_type, parent)

    @classmethod
    def from_message(cls, msg: dict) -> Outgoing:
        frame, binary = wire.encode(msg)
        return cls(frame, binary, msg["channel"], msg["msg_type"], msg.get("parent_header") or {})


class Backlog:
    """Messages kept for a client that is away, oldest dropped first beyond the bounds; the next
    read after a drop is a marker saying how many were lost."""

    def __init__(self, max_bytes: int, max_messages: int):
        self.max_bytes, self.max_messages = max_bytes, max_messages
        self._queue: deque[Outgoing] = deque()
        self.bytes = 0
        self.dropped = 0
        self._dropped_parent: dict = {}

    def __len__(self) -> int:
        return len(self._queue) + (1 if self.dropped else 0)

    def append(self, out: Outgoing) -> None:
        self._queue.append(out)
        self.bytes += out.size
        while self._queue and (self.bytes > self.max_bytes or len(self._queue) > self.max_messages):
            old = self._queue.popleft()
            self.bytes -= old.size
            self.dropped += 1
            self._dropped_parent = old.parent

    def appendleft(self, out: Outgoing) -> None:
        """Put back what could not be delivered after all (it was counted in already)."""
        self._queue.appendleft(out)
        self.bytes += out.size

    def popleft(self) -> Outgoing:
        if self.dropped:
            text = (f"[KernelCube] {self.dropped} message(s) were dropped while no client was connected "
                    f"(kept for a reconnect: the last {self.max_messages} messages, at most "
                    f"{self.max_bytes} bytes)\n")
            self.dropped = 0
            return Outgoing.from_message(wire.stderr_note(text, self._dropped_parent))
        out = self._queue.popleft()
        self.bytes -= out.size
        return out

    def clear(self) -> None:
        self._queue.clear()
        self.bytes = self.dropped = 0


class Outbox:
    """The way out to one connection. `write(frame, binary)` returns a future that resolves when
    the bytes reached the socket (None when the connection is closed); `flushed()` says whether
    nothing written is left unsent; `close(code, reason)`."""

    def __init__(self, write: Callable, flushed: Callable[[], bool], close: Callable[[int, str], None],
                 limits: ChannelLimits, label: str):
        self._write_frame, self._all_flushed, self._close = write, flushed, close
        self.limits = limits
        self.label = label
        self.live = False  # False while a backlog is replayed: new messages queue behind it
        self.closed = False
        self.pending = 0
        self.dropped = 0
        self._dropped_parent: dict = {}
        self._epoch = 0  # bumped when pending is reset: older writes' callbacks no longer count
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def _low_water(self) -> int:
        return self.limits.soft_bytes // 2

    def deliver(self, out: Outgoing) -> bool:
        """Send (or knowingly drop) a message; False when the connection is closing, and the
        message should be kept for a reconnect instead."""
        if self.closed:
            return False
        self._sync()
        if out.droppable and self.pending > self.limits.soft_bytes:
            self.dropped += 1
            self._dropped_parent = out.parent
            return True
        if self.pending and self.pending + out.size > self.limits.hard_bytes:
            log.warning("%s: %d bytes unread by the client (cap %d); closing the connection",
                        self.label, self.pending, self.limits.hard_bytes)
            self.close(wire.CLOSE_TOO_SLOW, "the client left too many kernel messages unread")
            return False
        return self._write(out)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._close(code, reason)

    def _sync(self) -> None:
        """A burst of writes reaches the socket before their callbacks run (a loop iteration
        later): when nothing is left unsent, nothing is pending, whatever the callbacks say."""
        if self.pending and self._all_flushed():
            self._epoch += 1
            self.pending = 0
            self._caught_up()

    def _write(self, out: Outgoing) -> bool:
        future = self._write_frame(out.frame, out.binary)
        if future is None:  # the client is closing: it will not read this
            self.closed = True
            return False
        self.pending += out.size
        if self.pending > self._low_water:
            self._drained.clear()
        future.add_done_callback(functools.partial(self._flushed, out.size, self._epoch))
        return True

    def _flushed(self, size: int, epoch: int, future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # a closed connection is handled by its on_close, not here
        if epoch != self._epoch:
            return  # counted out by _sync already
        self.pending -= size
        if self.pending <= self._low_water:
            self._caught_up()

    def _caught_up(self) -> None:
        self._drained.set()
        if self.dropped and not self.closed:
            log.info("%s: the client caught up; %d output message(s) were dropped", self.label, self.dropped)
            text = (f"[KernelCube] {self.dropped} output message(s) were dropped: this client was not "
                    "reading fast enough\n")
            self.dropped = 0
            self._write(Outgoing.from_message(wire.stderr_note(text, self._dropped_parent)))

    async def replay(self, backlog: Backlog) -> None:
        """Deliver what was kept, in order and at the client's pace, then go live. New messages
        join the backlog meanwhile, so nothing overtakes what was kept."""
        if backlog:
            log.info("%s: replaying %d message(s) kept while no client was connected", self.label, len(backlog))
        while backlog and not self.closed:
            out = backlog.popleft()
            if not self.deliver(out):
                backlog.appendleft(out)
                break
            await self._drained.wait()
        self.live = True
