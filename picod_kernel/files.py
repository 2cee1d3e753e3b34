"""`POST /api/files` (multipart or JSON/base64), `GET /api/files?path=` and `GET /api/files/<path>`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
import posixpath
import stat
from urllib.parse import unquote

from .command_handlers import rfc3339
from .jail import JailError
from .multipart import parse_form
from .server import Reply, Request, RequestError, http_date

DEFAULT_MODE = 0o644
DOWNLOAD_PREFIX = "/api/files/"
CHUNK = 256 * 1024


def parse_mode(text) -> int:
    """Upstream's rule: an octal string up to 0777; anything else means 0644."""
    if not isinstance(text, str) or not text:
        return DEFAULT_MODE
    try:
        mode = int(text, 8)
    except ValueError:
        return DEFAULT_MODE
    return mode if 0 <= mode <= 0o777 else DEFAULT_MODE


def mode_string(st_mode: int) -> str:
    """Go's FileMode.String(): `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`."""
    kind = "d" if stat.S_ISDIR(st_mode) else "L" if stat.S_ISLNK(st_mode) else "-"
    return kind + stat.filemode(st_mode)[1:]


def file_info(workspace, path: str) -> dict:
    st = os.stat(path)
    return {"path": workspace.relative(path), "size": st.st_size, "mode": mode_string(st.st_mode),
            "modified": rfc3339(st.st_mtime)}


def write_file(workspace, user_path: str, content: bytes | memoryview, mode: int) -> dict:
    try:
        fd, path = workspace.open_for_write(user_path, mode)
    except JailError as exc:
        raise RequestError(400, str(exc)) from None
    except OSError as exc:
        raise RequestError(500, f"Failed to create destination file: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
    except OSError as exc:
        raise RequestError(500, f"Failed to save file content: {exc}") from None
    return file_info(workspace, path)


def list_directory(workspace, user_path: str) -> dict:
    try:
        path = workspace.resolve(user_path)
    except JailError as exc:
        raise RequestError(400, str(exc)) from None
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise RequestError(404, "Directory not found") from None
    except OSError as exc:
        raise RequestError(500, f"Failed to read directory: {exc}") from None
    files = []
    for name in names:
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:
            continue
        files.append({"name": name, "size": st.st_size, "modified": rfc3339(st.st_mtime),
                      "mode": mode_string(st.st_mode), "is_dir": stat.S_ISDIR(st.st_mode)})
    return {"files": files}


async def upload(state, request: Request, reply: Reply) -> None:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        user_path, content, mode = _multipart_upload(content_type, request.body)
    else:
        user_path, content, mode = _json_upload(request.json_body())
    reply.send_json(await asyncio.to_thread(write_file, state.workspace, user_path, content, mode))


def _multipart_upload(content_type: str, body: bytearray) -> tuple[str, memoryview, int]:
    fields, files = parse_form(content_type, body)
    path = fields.get("path", [b""])[0].decode("utf-8", "replace")
    if not path:
        raise RequestError(400, "Missing 'path' field")
    if "file" not in files:
        raise RequestError(400, "Failed to get file: http: no such file (send the content as a multipart part named 'file')")
    mode = parse_mode(fields.get("mode", [b""])[0].decode("utf-8", "replace"))
    return path, files["file"][0], mode


def _json_upload(body: dict) -> tuple[str, bytes, int]:
    path, content = body.get("path"), body.get("content")
    if not isinstance(path, str) or not path:
        raise RequestError(400, "Key: 'UploadFileRequest.Path' Error:Field validation for 'Path' failed on the 'required' tag")
    if not isinstance(content, str):
        raise RequestError(400, "Key: 'UploadFileRequest.Content' Error:Field validation for 'Content' failed on the 'required' tag (base64 string)")
    try:
        data = base64.b64decode(content.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"Invalid base64 content: {exc}") from None
    return path, data, parse_mode(body.get("mode"))


async def list_files(state, request: Request, reply: Reply) -> None:
    user_path = request.query_argument("path")
    if not user_path:
        raise RequestError(400, "Missing 'path' query parameter")
    reply.send_json(await asyncio.to_thread(list_directory, state.workspace, user_path))


async def download(state, request: Request, reply: Reply) -> None:
    """Streams one file; supports Range (206) and If-Modified-Since (304)."""
    user_path = unquote(request.path[len(DOWNLOAD_PREFIX):]).lstrip("/")
    try:
        path = state.workspace.resolve(user_path)
    except JailError as exc:
        raise RequestError(400, str(exc)) from None
    try:
        st = await asyncio.to_thread(os.stat, path)
    except FileNotFoundError:
        raise RequestError(404, "File not found") from None
    except OSError as exc:
        raise RequestError(500, f"Failed to get file info: {exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise RequestError(400, "Path is a directory, not a file")
    reply.headers["Last-Modified"] = http_date(int(st.st_mtime))
    reply.headers["Accept-Ranges"] = "bytes"
    if _not_modified_since(request.headers.get("if-modified-since"), st.st_mtime):
        reply.send(304)
        return
    start, end = 0, st.st_size
    byte_range = parse_range(request.headers.get("range", ""), st.st_size)
    if byte_range is not None:
        start, end = byte_range
        if start >= end:
            reply.headers["Content-Range"] = f"bytes */{st.st_size}"
            reply.send(416)
            return
        reply.headers["Content-Range"] = f"bytes {start}-{end - 1}/{st.st_size}"
    name = posixpath.basename(path)
    reply.headers.update({
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{name}"',
        "Content-Description": "File Transfer",
        "Content-Transfer-Encoding": "binary",
        "Content-Length": str(end - start),
    })
    reply.start(206 if byte_range is not None else 200)
    await _stream(reply, path, start, end)


async def _stream(reply: Reply, path: str, start: int, end: int) -> None:
    with open(path, "rb") as f:  # noqa: ASYNC230 -- reads below run in a thread
        f.seek(start)
        remaining = end - start
        while remaining > 0 and not reply.closed:
            chunk = await asyncio.to_thread(f.read, min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            reply.write(chunk)
            await reply.drain()
    if remaining == 0:
        reply.end()  # else the file shrank: the connection is closed, the reply left short


def _not_modified_since(header: str | None, mtime: float) -> bool:
    if not header:
        return False
    try:
        from email.utils import parsedate_to_datetime  # only for a conditional request
        return parsedate_to_datetime(header).timestamp() >= int(mtime)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored, as HTTP says


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range as [start, end); None means the whole file."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec or "-" not in spec:
        return None
    first, _, last = (part.strip() for part in spec.partition("-"))
    try:
        if not first:
            return max(size - int(last), 0), size
        start = int(first)
        end = size if not last else min(int(last) + 1, size)
    except ValueError:
        return None
    return start, end
