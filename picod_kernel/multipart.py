"""`multipart/form-data` bodies read in place: the parts of an upload as views into the body
received, not copies of it.

Tornado's `parse_body_arguments` copies a body three times over (a slice, a split, each value),
which for a 30 MiB upload cost more than receiving it. Here the body is only searched; each
part's headers still go through tornado's own parser (one small part at a time), so names,
file names and the refusal of bad headers are tornado's. A body not in the usual shape (no
final boundary, a part without headers, too many parts, a header tornado refuses) is handed
to tornado whole, so its answer, error included, is exactly what it was.

Tornado is imported on the first upload, not with the daemon: an idle PicoD does not carry it.
"""

from __future__ import annotations

from .server import RequestError

# Beyond this many parts the whole body goes to tornado (whose own limit is 100 by default).
MAX_PARTS = 16


def parse_form(content_type: str, body: bytearray | bytes) -> tuple[dict[str, list[bytes]], dict[str, list[memoryview]]]:
    """(fields, file contents) of a multipart body, as `parse_body_arguments` finds them; the
    file contents are views into `body`, valid while it is neither changed nor freed."""
    boundary = _boundary(content_type)
    found = _in_place(boundary, body) if boundary else None
    if found is not None:
        return found
    from tornado import httputil
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[httputil.HTTPFile]] = {}
    try:
        httputil.parse_body_arguments(content_type, bytes(body), fields, files)
    except httputil.HTTPInputError as exc:
        raise RequestError(400, f"Failed to parse the multipart form: {exc}") from None
    return fields, {name: [memoryview(f.body) for f in entries] for name, entries in files.items()}


def _boundary(content_type: str) -> bytes | None:
    """The boundary as tornado reads it from the Content-Type, or None."""
    params = content_type.split(";")
    if params[0].strip() != "multipart/form-data":
        return None
    for param in params:
        key, _, value = param.strip().partition("=")
        if key == "boundary" and value:
            boundary = value.encode("utf-8")
            if boundary.startswith(b'"') and boundary.endswith(b'"'):
                boundary = boundary[1:-1]
            return boundary or None
    return None


def _in_place(boundary: bytes, body: bytearray | bytes) -> tuple[dict, dict] | None:
    """The parts found as tornado's split finds them; None for anything unusual."""
    end = body.rfind(b"--" + boundary + b"--")
    if end < 0:
        return None
    delimiter = b"--" + boundary + b"\r\n"
    spans, start = [], 0
    while True:
        found = body.find(delimiter, start, end)
        if found < 0:
            spans.append((start, end))
            break
        spans.append((start, found))
        start = found + len(delimiter)
        if len(spans) > MAX_PARTS:
            return None
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[memoryview]] = {}
    view = memoryview(body)
    for first, last in spans:
        if first == last:
            continue
        head_end = body.find(b"\r\n\r\n", first, last)
        if head_end < 0 or body[last - 2:last] != b"\r\n":
            return None
        parsed = _part_headers(boundary, bytes(view[first:head_end]))
        if parsed is None:
            return None
        name, is_file = parsed
        value = view[head_end + 4:max(head_end + 4, last - 2)]
        if is_file:
            files.setdefault(name, []).append(value)
        else:
            fields.setdefault(name, []).append(bytes(value))
    return fields, files


def _part_headers(boundary: bytes, head: bytes) -> tuple[str, bool] | None:
    """(name, is a file) of one part, from tornado's parse of a body made of its headers alone."""
    from tornado import httputil
    sample = b"--" + boundary + b"\r\n" + head + b"\r\n\r\n\r\n--" + boundary + b"--"
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list] = {}
    try:
        httputil.parse_multipart_form_data(boundary, sample, fields, files)
    except Exception:  # noqa: BLE001 -- any refusal (HTTPInputError, UnicodeDecodeError, ...) is for tornado to word
        return None
    if len(fields) + len(files) != 1:
        return None
    return (next(iter(files)), True) if files else (next(iter(fields)), False)
