"""The frames of the kernel channels WebSocket, as PicoD and the gateway's upstream leg speak them.

A message without buffers is one text frame: a JSON object with `header`, `msg_id`, `msg_type`,
`parent_header`, `metadata`, `content`, `buffers` (empty) and `channel`. A message with buffers
is one binary frame in jupyter_server's legacy binary format (`serialize_binary_message`): a
big-endian uint32 count n of parts, n uint32 offsets from the start of the frame, then the JSON
(without `buffers`) and each buffer. The format is written here, not imported, because the
sandbox's Python has no jupyter_server; the gateway imports this module for the same reason
it imports `picod_kernel.limits`: both ends must agree byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import struct
import uuid

CLIENT_CHANNELS = ("shell", "control", "stdin")  # where a client may send; iopub is the kernel's
PROTOCOL_VERSION = "5.3"

# Close codes with which PicoD ends one connection on purpose while the kernel lives on; any
# other end of PicoD's socket (1006: the connection was lost) means the sandbox is gone.
CLOSE_NORMAL = 1000  # e.g. its ping went unanswered (a client stalled for a long time)
CLOSE_TOO_SLOW = 1008  # the client left too much unread (policy violation)
CLOSE_REPLACED = 4000  # the same client session connected again
KERNEL_LIVES = (CLOSE_NORMAL, CLOSE_TOO_SLOW, CLOSE_REPLACED)


class MalformedFrame(ValueError):
    """A frame that is not a Jupyter message a client may send; the text says why."""


def pack_binary(json_part: bytes, buffers) -> bytes:
    """The legacy binary frame of a message's JSON (without `buffers`) and its buffers."""
    parts = [json_part, *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + memoryview(part).nbytes)
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def unpack_binary(frame: bytes) -> tuple[bytes, list[bytes]]:
    """The JSON part and the buffers of a legacy binary frame, checked before any is sliced
    (a garbage count must not make us allocate or loop on it)."""
    if len(frame) < 8:
        raise MalformedFrame("a binary frame too short to hold a message")
    (count,) = struct.unpack_from("!I", frame)
    head = 4 * (count + 1)
    if count < 1 or head > len(frame):
        raise MalformedFrame(f"a binary frame announcing {count} parts in {len(frame)} bytes")
    offsets = [*struct.unpack_from(f"!{count}I", frame, 4), len(frame)]
    if offsets[0] < head or any(a > b for a, b in zip(offsets, offsets[1:], strict=False)):
        raise MalformedFrame("a binary frame whose part offsets are out of order")
    parts = [frame[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]
    return parts[0], parts[1:]


def decode(frame: str | bytes) -> dict:
    """The message in a client's text or binary frame, its `buffers` as bytes. Text frames may
    carry buffers base64-encoded in the JSON (what legacy clients can send)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        raw, buffers = unpack_binary(bytes(frame))
    else:
        raw, buffers = frame, None
    if not raw:
        raise MalformedFrame("an empty frame")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise MalformedFrame(f"JSON {type(msg).__name__}, not an object")
    if buffers is None:
        listed = msg.get("buffers") or []
        if not isinstance(listed, list) or not all(isinstance(b, str) for b in listed):
            raise MalformedFrame("'buffers' in a text frame must be a list of base64 strings")
        try:
            buffers = [base64.b64decode(b, validate=True) for b in listed]
        except binascii.Error as exc:
            raise MalformedFrame(f"a buffer is not base64 ({exc})") from None
    msg["buffers"] = buffers
    return msg


def check_request(msg: dict) -> str:
    """Check a decoded client message and take its channel out (shell when it names none, as
    jupyter_server and Kernel Gateway assume); fill the parts a client may leave out."""
    channel = msg.pop("channel", None) or "shell"
    if channel not in CLIENT_CHANNELS:
        raise MalformedFrame(f"unknown channel {channel!r}; a client sends on {', '.join(CLIENT_CHANNELS)}")
    header = msg.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise MalformedFrame("'header' must be an object with a 'msg_type'")
    for key in ("parent_header", "metadata", "content"):
        if msg.setdefault(key, {}) is None:
            msg[key] = {}
        if not isinstance(msg[key], dict):
            raise MalformedFrame(f"'{key}' must be an object")
    return channel


def encode(msg: dict) -> tuple[bytes, bool]:
    """A whole message (with `channel`) as one frame: (data, is_binary)."""
    buffers = msg.get("buffers") or []
    body = {k: v for k, v in msg.items() if k != "buffers"}
    if buffers:
        return pack_binary(json.dumps(body, default=str).encode(), buffers), True
    return json.dumps({**body, "buffers": []}, default=str).encode(), False


def notice(msg_type: str, content: dict, parent_header: dict | None = None, channel: str = "iopub") -> dict:
    """A message from KernelCube itself (a status it reports, a marker, a refusal)."""
    msg_id = uuid.uuid4().hex
    now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    header = {"msg_id": msg_id, "msg_type": msg_type, "username": "kernelcube", "session": "kernelcube",
              "date": now, "version": PROTOCOL_VERSION}
    return {"header": header, "msg_id": msg_id, "msg_type": msg_type, "parent_header": parent_header or {},
            "metadata": {}, "content": content, "buffers": [], "channel": channel}


def refusal(reason: str) -> dict:
    """The iopub error that answers a frame we could not use (the connection stays open)."""
    return notice("error", {"ename": "InvalidMessage", "evalue": f"refused a message: {reason}", "traceback": []})


def stderr_note(text: str, parent_header: dict | None = None) -> dict:
    """An iopub stream to stderr: how markers reach the cell whose output they concern."""
    return notice("stream", {"name": "stderr", "text": text}, parent_header)
