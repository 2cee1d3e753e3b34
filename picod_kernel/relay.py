"""Relays: a client's own sockets to the kernel, and which client gets which.

Each connected client has a relay: its own shell, control, stdin and iopub sockets, so it gets
its own replies and all the output. A client that names its session (`?session_id=`, as
jupyter_server does) and goes away leaves its relay *parked*: the sockets stay connected and
what arrives is kept (bounded, see `Backlog`), to be replayed when that session reconnects,
replies to requests sent before the drop included. One relay is parked per kernel: a client of
another session discards it, a client without a session id (nbclient) gets a fresh relay.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from . import wire
from .outbox import Backlog, ChannelLimits, Outbox, Outgoing

log = logging.getLogger("picod.channels")

NUDGE_TRIES = 100
NUDGE_WAIT = 0.1  # seconds for iopub to answer one kernel_info before asking again
YIELD_EVERY = 100  # messages relayed in one go before other tasks get a turn


class Relay:
    """One client's sockets to the kernel, with an outbox while the client is connected and a
    backlog while it is not (or while the backlog is replayed)."""

    def __init__(self, kernel, session_id: str, limits: ChannelLimits):
        self.session_id = session_id
        self.session = kernel.session.clone()  # its own digest history: every relay sees every iopub message
        # One identity for shell and stdin: the kernel sends input_request to the identity of
        # the shell socket that asked, and other clients' relays must not share it.
        self.sockets = kernel.connect_channels(identity=uuid.uuid4().hex.encode())
        self.backlog = Backlog(limits.replay_bytes, limits.replay_messages)
        self.outbox: Outbox | None = None
        self.settled = asyncio.Event()  # this relay's iopub is known to be live
        self._nudges: set[str] = set()  # our own kernel_info requests, never forwarded
        self._iopub_answered = asyncio.Event()
        self._readers = [asyncio.ensure_future(self._read(name, sock)) for name, sock in self.sockets.items()]
        self._replaying: asyncio.Task | None = None
        self._unsubscribe = kernel.add_state_listener(self._on_kernel_state)
        self._settling: asyncio.Task | None = asyncio.ensure_future(self._settle(announce=False))

    # -- the client ------------------------------------------------------------------------

    def attach(self, outbox: Outbox) -> None:
        self.detach()
        self.outbox = outbox
        self._replaying = asyncio.ensure_future(outbox.replay(self.backlog))

    def detach(self) -> None:
        if self._replaying is not None:
            self._replaying.cancel()
            self._replaying = None
        if self.outbox is not None:
            self.outbox.live = False
            self.outbox = None

    def emit(self, out: Outgoing) -> None:
        if self.outbox is None or not self.outbox.live or not self.outbox.deliver(out):
            self.backlog.append(out)

    async def send(self, channel: str, msg: dict) -> None:
        """A client's message to the kernel, once this relay's iopub is live (see `_settle`)."""
        buffers = msg.pop("buffers", None) or []
        frames = self.session.serialize(msg)  # signed with the kernel's key, which clients never see
        await self.settled.wait()
        await self.sockets[channel].send_multipart([*frames, *buffers])

    def close(self) -> None:
        self.detach()
        self._unsubscribe()
        for task in [*self._readers, self._settling]:
            if task is not None:
                task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.backlog.clear()

    # -- the kernel ------------------------------------------------------------------------

    async def _read(self, channel: str, sock) -> None:
        """Read as fast as the kernel writes: a lagging SUB socket loses messages at zmq's
        high-water mark (a client would then wait forever for its `idle`)."""
        relayed = 0
        while True:
            parts = await sock.recv_multipart()
            try:
                _, frames = self.session.feed_identities(parts)
                out = Outgoing.from_kernel(channel, frames)
            except Exception as exc:
                log.warning("dropped an unreadable message on %s: %s", channel, exc)
                continue
            if out.parent.get("msg_id") in self._nudges:
                if channel == "iopub":
                    self._iopub_answered.set()
                continue
            self.emit(out)
            relayed += 1
            if relayed % YIELD_EVERY == 0:  # a long burst must not hold up other connections
                await asyncio.sleep(0)

    async def _settle(self, announce: bool) -> None:
        """Hold the client's messages until this relay's iopub answers: a new (or reconnecting)
        SUB socket misses what the kernel publishes before its subscription arrives, and a
        client would wait forever for the output or `idle` of its first request. Ask
        kernel_info (as jupyter_server's nudge does) until iopub shows its status."""
        self.settled.clear()
        self._iopub_answered.clear()
        for _ in range(NUDGE_TRIES):
            nudge = self.session.msg("kernel_info_request", {})
            self._nudges.add(nudge["header"]["msg_id"])
            await self.sockets["shell"].send_multipart(self.session.serialize(nudge))
            try:
                await asyncio.wait_for(self._iopub_answered.wait(), NUDGE_WAIT)
                break
            except asyncio.TimeoutError:
                continue
        else:
            log.warning("the kernel's iopub did not answer this relay; forwarding anyway")
        self.settled.set()
        if announce:  # after a restart: the client learns the kernel is back
            self.emit(Outgoing.from_message(wire.notice("status", {"execution_state": "idle"})))

    def _on_kernel_state(self, state: str) -> None:
        if state in ("dead", "restarting"):
            self.settled.clear()
            self.emit(Outgoing.from_message(wire.notice("status", {"execution_state": state})))
        elif state == "ready":  # back after a restart: the sockets reconnected by themselves
            if self._settling is not None:
                self._settling.cancel()
            self._settling = asyncio.ensure_future(self._settle(announce=True))
        elif state == "failed":  # nothing to wait for any more; messages meet the dead kernel
            self.settled.set()


class Relays:
    """Which relay each connection of this daemon's kernel uses, and the one parked relay."""

    def __init__(self, kernel, limits: ChannelLimits):
        self.kernel = kernel
        self.limits = limits
        self._attached: dict[str, tuple[Relay, Outbox]] = {}  # session id -> its live connection
        self._parked: Relay | None = None

    def connect(self, outbox: Outbox, session_id: str) -> Relay:
        relay = None
        if session_id in self._attached:
            # The same client again before its old connection was seen closing: take over.
            relay, stale = self._attached.pop(session_id)
            stale.close(wire.CLOSE_REPLACED, "replaced by a newer connection of the same session")
            log.info("channels: session %s connected again; its older connection was replaced", session_id)
        elif session_id and self._parked is not None and self._parked.session_id == session_id:
            relay, self._parked = self._parked, None
            log.info("channels: session %s reconnected; %d message(s) kept for it", session_id, len(relay.backlog))
        elif session_id and self._parked is not None:
            log.info("channels: session %s connected; discarding the messages kept for session %s",
                     session_id, self._parked.session_id)
            self._parked.close()
            self._parked = None
        if relay is None:
            relay = Relay(self.kernel, session_id, self.limits)
        if session_id:
            self._attached[session_id] = (relay, outbox)
        relay.attach(outbox)
        return relay

    def disconnect(self, relay: Relay, outbox: Outbox) -> None:
        if relay.outbox is not outbox:
            return  # a newer connection of the same session took the relay over
        relay.detach()
        if not relay.session_id:
            relay.close()
            return
        self._attached.pop(relay.session_id, None)
        if self._parked is not None:
            self._parked.close()
        self._parked = relay
        log.info("channels: session %s disconnected; keeping its kernel messages for a reconnect", relay.session_id)
