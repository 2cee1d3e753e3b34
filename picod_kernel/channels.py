"""`/api/kernel/channels`: the kernel's WebSocket, one relay per client (see `relay`).

Frames are those of `wire`: text JSON (a missing `channel` means shell) and, for messages with
buffers, legacy binary frames. A frame that is not a message is answered with an iopub error and
the connection stays open. `?session_id=` names the client's session, for replay on reconnect.
"""

from __future__ import annotations

import asyncio
import logging

from . import wire
from .outbox import Outbox, Outgoing
from .relay import Relays
from .server import Reply, Request, RequestError

log = logging.getLogger("picod.channels")

READY_WAIT = 60.0  # seconds a connection may wait for a (re)starting kernel
MAX_SESSION_ID = 256


async def until_settled(kernel, timeout: float) -> None:
    """Wait while the kernel is starting or restarting (it is "failed" for good, or "ready")."""
    if kernel.state not in ("starting", "restarting", "dead"):
        return
    settled = asyncio.Event()
    forget = kernel.add_state_listener(lambda state: state in ("ready", "failed") and settled.set())
    try:
        await asyncio.wait_for(settled.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        forget()


class Channels:
    """The route's handler: `await channels(state, request, reply)` (authenticated already)."""

    def __init__(self, relays: Relays):
        self.relays = relays

    async def __call__(self, state, request: Request, reply: Reply) -> None:
        kernel = state.kernel
        if kernel is None:
            raise RequestError(404, "this PicoD runs without a kernel (started with --no-kernel)")
        # wsproto (and h11 with it) is loaded by the first WebSocket, not by every daemon.
        from .websocket import check_handshake
        check_handshake(request)
        # A client arriving during a restart waits for the kernel, as one arriving before it
        # would have waited for its first reply: refusing would make it re-dial.
        await until_settled(kernel, READY_WAIT)
        if kernel.state != "ready":
            raise RequestError(503, f"the kernel is {kernel.state}")
        session_id = request.query_argument("session_id")[:MAX_SESSION_ID]
        ChannelsConnection(self.relays, session_id).open(request, reply)


class ChannelsConnection:
    """Relays Jupyter messages between one client and the kernel."""

    def __init__(self, relays: Relays, session_id: str):
        self.relays = relays
        self.session_id = session_id
        self.relay = None
        self.outbox: Outbox | None = None
        self.socket = None

    def open(self, request: Request, reply: Reply) -> None:
        from .websocket import WebSocket
        self.socket = WebSocket.accept(request, reply, reply.connection, on_message=self.on_message,
                                       on_close=self.on_close)
        label = f"channels ({'session ' + self.session_id if self.session_id else 'no session id'})"
        self.outbox = Outbox(self.socket.send, self.socket.flushed, self.socket.close, self.relays.limits, label)
        self.relay = self.relays.connect(self.outbox, self.session_id)

    async def on_message(self, message) -> None:
        try:
            msg = wire.decode(message)
            channel = wire.check_request(msg)
            if self.relay is not None:
                await self.relay.send(channel, msg)
        except (wire.MalformedFrame, TypeError, ValueError) as exc:  # Type/Value: unserialisable content
            log.warning("refused a channels message: %s", exc)
            if self.outbox is not None:
                self.outbox.deliver(Outgoing.from_message(wire.refusal(str(exc))))

    def on_close(self) -> None:
        if self.relay is not None:
            self.relays.disconnect(self.relay, self.outbox)
            self.relay = None
