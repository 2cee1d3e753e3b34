"""Multipart bodies read in place give what tornado's `parse_body_arguments` gives, for usual
and unusual bodies alike (refusals included, word for word), with file contents as views into
the received body rather than copies."""

from __future__ import annotations

import pytest
from tornado import httputil

from picod_kernel.multipart import MAX_PARTS, parse_form
from picod_kernel.server import RequestError

B = "XyZ-boundary"
CT = f"multipart/form-data; boundary={B}"


def part(name: str, value: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"Content-Disposition: {disposition}\r\n" + extra
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return f"--{B}\r\n".encode() + head.encode() + b"\r\n" + value + b"\r\n"


END = f"--{B}--\r\n".encode()
BINARY = bytes(range(256)) * 4 + f"\r\n--{B}\r".encode() + b"\r\n\r\n--" + b"tail"

BODIES = {
    "usual": (CT, part("path", b"a/b.bin") + part("mode", b"0600") + part("file", BINARY, "f.bin") + END),
    "file first": (CT, part("file", b"data", "f") + part("path", b"p.txt") + END),
    "empty file": (CT, part("path", b"p") + part("file", b"", "e") + END),
    "repeated names": (CT, part("path", b"one") + part("path", b"two") + part("file", b"1", "a")
                       + part("file", b"2", "b") + END),
    "filename star": (CT, part("path", b"p") + f"--{B}\r\nContent-Disposition: form-data; name=\"file\"; "
                      "filename*=UTF-8''%C3%A9.txt\r\n\r\nxyz\r\n".encode() + END),
    "epilogue": (CT, part("path", b"p") + part("file", b"x", "f") + END + b"junk after the end"),
    "quoted boundary": (f'multipart/form-data; boundary="{B}"', part("path", b"p") + part("file", b"q", "f") + END),
    "extra params": (f"multipart/form-data; charset=utf-8; boundary={B}", part("path", b"p") + part("file", b"z", "f") + END),
    "preamble": (CT, b"preamble\r\n" + part("path", b"p") + part("file", b"x", "f") + END),
    "no final boundary": (CT, part("path", b"p") + part("file", b"x", "f")),
    "part without headers": (CT, part("path", b"p") + f"--{B}\r\nno headers here\r\n".encode() + END),
    "not form-data": (CT, part("path", b"p") + f"--{B}\r\nContent-Disposition: attachment; name=\"x\"\r\n\r\nv\r\n".encode() + END),
    "no name": (CT, f"--{B}\r\nContent-Disposition: form-data\r\n\r\nv\r\n".encode() + END),
    "no CRLF before boundary": (CT, f"--{B}\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nv".encode() + END),
    "many parts": (CT, b"".join(part(f"f{i}", b"v") for i in range(MAX_PARTS + 3)) + part("file", b"x", "f") + END),
    "too many parts": (CT, b"".join(part(f"f{i}", b"v") for i in range(120)) + END),
    "huge part header": (CT, part("file", b"x", "f", extra="X-Pad: " + "p" * 20000 + "\r\n") + END),
    "bad header bytes": (CT, f"--{B}\r\n".encode() + b"Content-Disposition: form-data; name=\"p\"\r\nX: \xff\xfe\r\n\r\nv\r\n" + END),
    "no boundary": ("multipart/form-data", part("path", b"p") + END),
    "content type suffix": (f"multipart/form-dataxyz; boundary={B}", part("path", b"p") + END),
    "empty body": (CT, b""),
}


def tornado_parse(content_type: str, body: bytes):
    fields: dict = {}
    files: dict = {}
    httputil.parse_body_arguments(content_type, body, fields, files)
    return fields, {name: [f.body for f in entries] for name, entries in files.items()}


@pytest.mark.parametrize("name", list(BODIES))
def test_same_as_tornado(name):
    content_type, body = BODIES[name]
    try:
        expected = tornado_parse(content_type, body)
    except httputil.HTTPInputError as exc:  # a 400 that says what tornado says
        with pytest.raises(RequestError) as info:
            parse_form(content_type, bytearray(body))
        assert info.value.status == 400 and info.value.message.endswith(str(exc))
        return
    fields, files = parse_form(content_type, bytearray(body))
    assert fields == expected[0]
    assert {n: [bytes(v) for v in views] for n, views in files.items()} == expected[1]


@pytest.mark.parametrize("name", ["usual", "file first", "empty file", "repeated names", "filename star",
                                  "epilogue", "quoted boundary", "extra params"])
def test_usual_bodies_are_read_in_place(name):
    content_type, body = BODIES[name]
    received = bytearray(body)
    _, files = parse_form(content_type, received)
    assert all(view.obj is received for view in files["file"])
