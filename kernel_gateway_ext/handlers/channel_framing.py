"""How the channels WebSocket frames messages towards each kind of client, and back upstream.

Upstream (gateway <-> PicoD) speaks `picod_kernel.wire`: text JSON, or a legacy binary frame
for a message with buffers. Clients speak one of:

- the legacy JSON protocol (no subprotocol: `--gateway-url`, nbclient): text frames only, as
  contract §4.2 requires, buffers base64 in the JSON `buffers` list; from the client, text (with
  base64 buffers) or legacy binary frames;
- `v1.kernel.websocket.jupyter.org` (browsers talking to us directly): jupyter_server's binary
  v1 frames, channel and buffers included.

A frame a client sends that is no message raises `MalformedFrame`: the handler answers it.
"""

from __future__ import annotations

import base64
import json

from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from picod_kernel import wire
from picod_kernel.wire import MalformedFrame

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
V1_PARTS = ("header", "parent_header", "metadata", "content")

__all__ = ["LegacyFraming", "MalformedFrame", "V1Framing", "V1_PROTOCOL", "framing_for"]


def _upstream(msg: dict, channel: str) -> str | bytes:
    """A checked client message as PicoD takes it: text unless it carries buffers."""
    frame, binary = wire.encode({**msg, "channel": channel})
    return frame if binary else frame.decode()


def _from_upstream(frame: str | bytes) -> tuple[dict, list[bytes]]:
    if isinstance(frame, str):
        msg = json.loads(frame)
        return msg, []
    raw, buffers = wire.unpack_binary(frame)
    return json.loads(raw), buffers


class LegacyFraming:
    """Text JSON frames both ways (binary legacy frames accepted from the client)."""

    def to_client(self, frame: str | bytes) -> tuple[str | bytes, bool]:
        if isinstance(frame, str):
            return frame, False  # PicoD's text frames already are what a legacy client reads
        msg, buffers = _from_upstream(frame)
        msg["buffers"] = [base64.b64encode(b).decode("ascii") for b in buffers]
        return json.dumps(msg), False

    def message(self, msg: dict) -> tuple[str | bytes, bool]:
        return json.dumps({**msg, "buffers": []}), False

    def to_upstream(self, frame: str | bytes) -> str | bytes:
        msg = wire.decode(frame)
        channel = wire.check_request(msg)
        if isinstance(frame, str) and not msg["buffers"]:
            return frame  # as sent: PicoD defaults the channel the same way
        return _upstream(msg, channel)


class V1Framing:
    """jupyter_server's v1 binary frames (text frames still accepted as legacy JSON)."""

    def to_client(self, frame: str | bytes) -> tuple[str | bytes, bool]:
        msg, buffers = _from_upstream(frame)
        return self.message({**msg, "buffers": buffers})

    def message(self, msg: dict) -> tuple[str | bytes, bool]:
        parts = [json.dumps(msg.get(key) or {}).encode() for key in V1_PARTS]
        return serialize_msg_to_ws_v1([*parts, *(msg.get("buffers") or [])], msg.get("channel") or "iopub"), True

    def to_upstream(self, frame: str | bytes) -> str | bytes:
        if isinstance(frame, str):
            return LegacyFraming().to_upstream(frame)
        # Check the offset count first: a garbage count would make the parser loop on it.
        count = int.from_bytes(frame[:8], "little") if len(frame) >= 8 else 0
        if not 2 + len(V1_PARTS) <= count <= len(frame) // 8 - 1:
            raise MalformedFrame("not a v1 kernel message frame")
        try:
            channel, parts = deserialize_msg_from_ws_v1(frame)
            msg = {key: json.loads(part) if part else {} for key, part in zip(V1_PARTS, parts, strict=False)}
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedFrame(f"an unreadable v1 frame ({exc})") from None
        if len(parts) < len(V1_PARTS):
            raise MalformedFrame("a v1 frame without header, parent_header, metadata and content")
        msg["channel"] = channel
        msg["buffers"] = [bytes(part) for part in parts[len(V1_PARTS):]]
        channel = wire.check_request(msg)
        return _upstream(msg, channel)


def framing_for(subprotocol: str | None) -> LegacyFraming | V1Framing:
    return V1Framing() if subprotocol == V1_PROTOCOL else LegacyFraming()
