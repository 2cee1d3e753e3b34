"""PicoD's HTTP/1.1 server over raw sockets: pipelined requests answered in order, keep-alive and
HTTP/1.0, `Expect: 100-continue`, malformed requests, streamed replies, and the upgrade rules."""

from __future__ import annotations

import base64
import json
import socket
from email.utils import formatdate

import pytest

from picod_kernel.server import http_date

from .conftest import Picod


@pytest.fixture(scope="module")
def daemon(keys, tmp_path_factory):
    server = Picod(keys, str(tmp_path_factory.mktemp("workspace")), "--no-kernel")
    yield server
    server.stop()


def connect(picod: Picod) -> socket.socket:
    host, port = picod.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length or chunked) from `buffer` topped up from `sock`."""
    while b"\r\n\r\n" not in buffer:
        buffer += _recv(sock)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    buffer[:] = rest
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            while b"\r\n" not in buffer:
                buffer += _recv(sock)
            size_line, _, _ = bytes(buffer).partition(b"\r\n")
            size = int(size_line, 16)
            while len(buffer) < len(size_line) + 2 + size + 2:
                buffer += _recv(sock)
            body += buffer[len(size_line) + 2:len(size_line) + 2 + size]
            del buffer[:len(size_line) + 2 + size + 2]
            if size == 0:
                return status, headers, bytes(body)
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        buffer += _recv(sock)
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, headers, body


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def request(method: str, path: str, token: str | None = None, body: bytes = b"", version: str = "1.1",
            extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {path} HTTP/{version}\r\nHost: picod\r\n{auth}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def execute(argv: list[str]) -> bytes:
    return json.dumps({"command": argv}).encode()


def test_pipelined_requests_are_answered_in_order(daemon):
    token = daemon.token()
    with connect(daemon) as sock:
        sock.sendall(request("POST", "/api/execute", token, execute(["sh", "-c", "sleep 0.3; echo first"]))
                     + request("GET", "/nothing")
                     + request("POST", "/api/execute", token, execute(["echo", "third"])))
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 404, 200]
    assert json.loads(answers[0][2])["stdout"] == "first\n"
    assert answers[1][2] == b"404 page not found"
    assert json.loads(answers[2][2])["stdout"] == "third\n"


def test_http_10_closes_and_11_keeps_alive(daemon):
    with connect(daemon) as sock:
        sock.sendall(request("GET", "/health", version="1.0"))
        buffer = bytearray()
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""
    with connect(daemon) as sock:
        buffer = bytearray()
        for _ in range(3):
            sock.sendall(request("GET", "/health"))
            status, headers, _ = read_response(sock, buffer)
            assert status == 200 and "connection" not in headers and headers["server"] == "PicoD"


def test_expect_continue_is_answered_before_the_body(daemon):
    body = execute(["echo", "continued"])
    with connect(daemon) as sock:
        # The head declares the body's length but the body is sent only after the 100.
        head = request("POST", "/api/execute", daemon.token(), extra="Expect: 100-continue\r\n")
        sock.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
        buffer = bytearray()
        status, _, _ = read_response(sock, buffer)
        assert status == 100
        sock.sendall(body)
        status, _, raw = read_response(sock, buffer)
    assert status == 200 and json.loads(raw)["stdout"] == "continued\n"


def test_a_refused_request_gets_no_100_continue(daemon):
    with connect(daemon) as sock:
        sock.sendall(request("POST", "/api/execute", "not-a-token", extra="Expect: 100-continue\r\n"))
        status, _, raw = read_response(sock, bytearray())
    assert status == 401 and json.loads(raw)["code"] == 401


def test_a_malformed_request_is_a_400_and_the_connection_ends(daemon):
    with connect(daemon) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        status, headers, _ = read_response(sock, bytearray())
        assert status == 400 and headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_a_download_is_streamed_whole_and_the_connection_stays_usable(daemon):
    token = daemon.token()
    with connect(daemon) as sock:
        buffer = bytearray()
        payload = b"z" * 300_000
        upload = json.dumps({"path": "big.bin", "content": base64.b64encode(payload).decode()})
        sock.sendall(request("POST", "/api/files", token, upload.encode(), extra="Content-Type: application/json\r\n"))
        assert read_response(sock, buffer)[0] == 200
        sock.sendall(request("GET", "/api/files/big.bin", token))
        status, headers, raw = read_response(sock, buffer)
        assert status == 200 and raw == payload and headers["content-length"] == str(len(payload))
        sock.sendall(request("GET", "/health"))
        assert read_response(sock, buffer)[0] == 200


def test_websocket_route_without_an_upgrade_is_a_400(daemon):
    with connect(daemon) as sock:
        sock.sendall(request("GET", "/api/kernel/channels", daemon.token()))
        status, _, raw = read_response(sock, bytearray())
    # Without a kernel the route says so first; the handshake rules are for a daemon with one.
    assert status == 404 and "without a kernel" in json.loads(raw)["error"]


def test_refused_upgrade_closes_the_connection(daemon):
    with connect(daemon) as sock:
        sock.sendall(request("GET", "/api/kernel/channels", "bad-token",
                             extra="Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        status, _, _ = read_response(sock, bytearray())
        assert status == 401
        assert sock.recv(1) == b""


def test_a_head_without_end_is_refused_at_64_kib(daemon):
    with connect(daemon) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        filler = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        try:
            for _ in range(80):  # 80 KiB, and the head never ends
                sock.sendall(filler)
        except OSError:
            pass  # the daemon closed the connection while the rest was on its way
        status, headers, _ = read_response(sock, bytearray())
        assert status == 431 and headers["connection"] == "close"


@pytest.mark.parametrize("epoch", [0, 951_782_400, 1_000_000_000, 1_796_100_000])
def test_http_dates_are_those_of_email_utils(epoch):
    assert http_date(epoch) == formatdate(epoch, usegmt=True)
