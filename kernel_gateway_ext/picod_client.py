"""HTTP to one sandbox's PicoD, over its Unix socket (local) or TCP (Kubernetes).

One aiohttp session per sandbox keeps connections alive between calls. aiohttp sets
TCP_NODELAY on TCP connections by default, so small requests are not held back by Nagle.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import struct

import aiohttp

HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2)


class PicodUnreachable(ConnectionError):
    """The sandbox did not answer: its socket is gone, refused, or the call timed out."""


class PeerCheckFailed(PicodUnreachable):
    """The sandbox's socket is served by another process than the PicoD the gateway started:
    something replaced it. The session must not be used any more."""


def _peer_of(sock: socket.socket) -> dict:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return {"pid": pid, "uid": uid, "gid": gid}


async def peer_credentials(path: str) -> dict:
    """pid, uid and gid of the process serving a Unix socket (the kernel vouches for them)."""
    _, writer = await asyncio.open_unix_connection(path)
    try:
        return _peer_of(writer.get_extra_info("socket"))
    finally:
        writer.close()


class _CheckedUnixConnector(aiohttp.UnixConnector):
    """Every connection must reach the PicoD recorded when the sandbox started."""

    def __init__(self, path: str, peer: dict):
        super().__init__(path=path)
        self._peer = peer

    async def _create_connection(self, req, traces, timeout):
        protocol = await super()._create_connection(req, traces, timeout)
        peer = _peer_of(protocol.transport.get_extra_info("socket"))
        if (peer["pid"], peer["uid"]) != (self._peer["pid"], self._peer["uid"]):
            protocol.close()
            raise PeerCheckFailed(f"the sandbox's socket is served by pid {peer['pid']} (uid {peer['uid']}), "
                                  "not by the sandbox's daemon; the socket was replaced")
        return protocol


def _reason(exc: BaseException) -> str:
    """Why a connection failed, without the socket's path on this host."""
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, OSError) and os_error.errno:
        return os_error.strerror or errno.errorcode.get(os_error.errno, str(os_error.errno))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    return type(exc).__name__


class PicodClient:
    def __init__(self, endpoint: dict):
        if "unix_socket" in endpoint:
            path = endpoint["unix_socket"]
            peer = endpoint.get("peer")
            self._connector = _CheckedUnixConnector(path, peer) if peer else aiohttp.UnixConnector(path=path)
            self.base_url = "http://sandbox"
        else:
            self._connector = aiohttp.TCPConnector()
            self.base_url = endpoint["url"].rstrip("/")
        # No cookie jar: PicoD sets no cookies, and one sandbox's answers must never shape
        # the next request (nor cost a jar lookup on every call).
        self._session = aiohttp.ClientSession(connector=self._connector, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def request(self, method: str, path: str, *, token: str | None = None, headers: dict | None = None,
                      data=None, timeout: float | None = None,
                      read_timeout: float | None = None) -> aiohttp.ClientResponse:
        """Send one request; the caller reads and releases the response (a context manager).
        `timeout` bounds the whole call; `read_timeout`, each wait for the sandbox's next bytes."""
        headers = dict(headers or {})
        # Compression over loopback or a Unix socket only costs time; relayed clients that ask
        # for gzip get it (their Accept-Encoding is forwarded and the body passed through).
        headers.setdefault("Accept-Encoding", "identity")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return await self._session.request(method, self.base_url + path, headers=headers, data=data,
                                               timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=5,
                                                                             sock_read=read_timeout))
        except TimeoutError as exc:  # before OSError, its base class
            raise PicodUnreachable("the sandbox did not answer in time") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if isinstance(exc.__cause__, PeerCheckFailed):  # aiohttp wraps what the connector raised
                raise exc.__cause__ from None
            raise PicodUnreachable(f"the sandbox did not answer ({_reason(exc)})") from exc

    async def websocket(self, path: str, *, token: str) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to PicoD (its kernel channels); the caller closes it."""
        try:
            return await self._session.ws_connect(self.base_url + path, max_msg_size=0, autoping=True,
                                                  headers={"Authorization": f"Bearer {token}"},
                                                  timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except (aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError, OSError) as exc:
            if isinstance(exc.__cause__, PeerCheckFailed):
                raise exc.__cause__ from None
            raise PicodUnreachable(f"the sandbox's kernel channels did not open ({_reason(exc)})") from exc

    async def call_json(self, method: str, path: str, body: dict | None, *, token: str,
                        timeout: float | None = None, headers: dict | None = None) -> tuple[int, dict]:
        """A JSON request and its decoded JSON answer."""
        headers = {"Content-Type": "application/json", **(headers or {})}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.request(method, path, token=token, headers=headers, data=data, timeout=timeout)
        async with response:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PicodUnreachable(f"the sandbox stopped answering ({_reason(exc)})") from exc
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"error": raw.decode("utf-8", "replace")[:500]}

    async def health(self) -> tuple[int, dict]:
        try:
            async with self._session.get(self.base_url + "/health", timeout=HEALTH_TIMEOUT) as response:
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return 0, {}

    async def close(self) -> None:
        await self._session.close()
