"""The kernel bridge over HTTP: `POST /api/run`, the channels WebSocket, interrupt and restart."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import zmq
from jupyter_client.jsonutil import json_default
from tornado import websocket

from .auth import AuthError
from .base import PicodHandler, RequestError, set_nodelay
from .kernel import KernelUnavailable

log = logging.getLogger("picod.kernel")

NDJSON = "application/x-ndjson"
CHANNELS = ("shell", "control", "stdin", "iopub")
NUDGE_TRIES = 100
NUDGE_WAIT = 0.1  # seconds for iopub to answer one kernel_info before asking again


def _parse_run_request(body: dict) -> tuple[str, float | None, dict[str, str]]:
    code = body.get("code")
    if not isinstance(code, str):
        raise RequestError(400, "'code' is required and must be a string")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise RequestError(400, "'timeout' must be a positive number of seconds")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError(400, "'env' must be an object mapping strings to strings")
    return code, timeout, env


class KernelHandler(PicodHandler):
    @property
    def kernel(self):
        if self.state.kernel is None:
            raise RequestError(404, "this PicoD runs without a kernel (started with --no-kernel)")
        return self.state.kernel

    async def call(self, operation):
        try:
            return await operation
        except KernelUnavailable as exc:
            raise RequestError(503, f"{exc}; retry when GET /health reports the kernel ready") from None


class RunHandler(KernelHandler):
    """Runs code in the live kernel: one Execution JSON, or NDJSON events when asked."""

    async def post(self) -> None:
        code, timeout, env = _parse_run_request(self.json_body())
        kernel = self.kernel
        if NDJSON not in self.request.headers.get("Accept", ""):
            self.write_json(await self.call(kernel.execute(code, timeout, env)))
            return
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")

        def emit(event: dict) -> None:
            if not self.request.connection.stream.closed():
                self.write(json.dumps(event) + "\n")
                self.flush()

        await self.call(kernel.execute(code, timeout, env, on_event=emit))
        self.finish()


class InterruptHandler(KernelHandler):
    async def post(self) -> None:
        await self.call(self.kernel.interrupt())
        self.write_json({"status": "ok"})


class RestartHandler(KernelHandler):
    async def post(self) -> None:
        await self.call(self.kernel.restart())
        self.write_json({"status": "ok", "kernel": self.kernel.state})


class ChannelsHandler(websocket.WebSocketHandler):
    """Relays Jupyter messages in the legacy JSON framing (a missing `channel` means shell)."""

    def initialize(self, state) -> None:
        self.state = state
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.readers: list[asyncio.Task] = []
        self.unsubscribe = None
        self.settled = asyncio.Event()  # this relay's iopub is known to be live
        self._nudges: set[str] = set()  # our own kernel_info requests, never forwarded
        self._iopub_answered = asyncio.Event()
        self._settling: asyncio.Task | None = None

    def prepare(self) -> None:
        set_nodelay(self)
        try:
            self.state.verifier.verify(self.request.headers.get("Authorization"))
        except AuthError as exc:
            self.set_status(401)
            self.finish({"error": exc.error, "code": 401, "detail": exc.detail})
            return
        kernel = self.state.kernel
        if kernel is None or kernel.state != "ready":
            self.set_status(503)
            self.finish({"error": "the kernel is not ready", "code": 503})

    def open(self) -> None:
        self.set_nodelay(True)
        kernel = self.state.kernel
        self.session = kernel.session
        self.sockets = kernel.connect_channels()
        self.readers = [asyncio.ensure_future(self._relay(name, sock)) for name, sock in self.sockets.items()]
        self.unsubscribe = kernel.add_state_listener(self._on_kernel_state)
        self._settling = asyncio.ensure_future(self._settle(announce=False))

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
            self._send({"channel": "iopub", **self.session.msg("status", {"execution_state": "idle"})})

    async def _relay(self, channel: str, sock) -> None:
        while True:
            parts = await sock.recv_multipart()
            try:
                _, frames = self.session.feed_identities(parts)
                msg = self.session.deserialize(frames)
            except Exception:
                log.warning("dropped an unreadable message on %s", channel)
                continue
            msg.pop("buffers", None)
            if msg.get("parent_header", {}).get("msg_id") in self._nudges:
                if channel == "iopub":
                    self._iopub_answered.set()
                continue
            self._send({"channel": channel, **msg})

    def _send(self, msg: dict) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        self.write_message(json.dumps(msg, default=json_default))

    def _on_kernel_state(self, state: str) -> None:
        if state in ("dead", "restarting"):
            self.settled.clear()
            status = self.session.msg("status", {"execution_state": state})
            self._send({"channel": "iopub", **status})
        elif state == "ready" and self.sockets:  # back after a restart: the sockets reconnected
            if self._settling is not None:
                self._settling.cancel()
            self._settling = asyncio.ensure_future(self._settle(announce=True))
        elif state == "failed":  # nothing to wait for any more; messages meet the dead kernel
            self.settled.set()

    async def on_message(self, message) -> None:
        try:
            msg = json.loads(message)
            channel = msg.pop("channel", None) or "shell"
            sock = self.sockets[channel]
            if channel == "iopub":
                raise KeyError(channel)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("refused a channels message: %s", exc)
            self._send({"channel": "iopub", **self.session.msg(
                "error", {"ename": "InvalidMessage", "evalue": f"refused a message: {exc!r}", "traceback": []})})
            return
        await self.settled.wait()
        await sock.send_multipart(self.session.serialize(msg))

    def on_close(self) -> None:
        if self.unsubscribe:
            self.unsubscribe()
        if self._settling is not None:
            self._settling.cancel()
        for task in self.readers:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=0)
