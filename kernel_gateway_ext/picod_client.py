"""HTTP to one sandbox's PicoD, over its Unix socket (local) or TCP (Kubernetes).

One aiohttp session per sandbox keeps connections alive between calls. aiohttp sets
TCP_NODELAY on TCP connections by default, so small requests are not held back by Nagle.
"""

from __future__ import annotations

import json

import aiohttp

HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2)


class PicodUnreachable(ConnectionError):
    """The sandbox did not answer: its socket is gone, refused, or the call timed out."""


class PicodClient:
    def __init__(self, endpoint: dict):
        if "unix_socket" in endpoint:
            self._connector = aiohttp.UnixConnector(path=endpoint["unix_socket"])
            self.base_url = "http://sandbox"
        else:
            self._connector = aiohttp.TCPConnector()
            self.base_url = endpoint["url"].rstrip("/")
        self._session = aiohttp.ClientSession(connector=self._connector, auto_decompress=False,
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
            raise PicodUnreachable(f"the sandbox did not answer: {exc}") from exc

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
                raise PicodUnreachable(f"the sandbox stopped answering: {exc}") from exc
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
