"""The router's public key, for injection into CodeInterpreter pods as PICOD_AUTH_PUBLIC_KEY.

The key pair lives in the Secret `picod-router-identity` (format and race-safe creation in
`kernelcube_wire.identity_secret`, shared with the gateway). The controller creates the Secret
if no gateway has yet, so pods never wait for a gateway to start. Loading runs in the
background with capped backoff (100 ms → 10 s) and the key is cached for the process lifetime
after the first success, as upstream's WM does: the Secret is never rotated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from controller.errors import AlreadyExists, NotFound
from controller.resources import SECRETS
from kernelcube_wire.identity_secret import SECRET_NAME, ensure_identity

log = logging.getLogger(__name__)


async def load_public_key(kube: Any, namespace: str) -> str:
    """Read (creating if needed) the identity Secret; the PKIX public key PEM."""

    async def create(body: dict) -> bool:
        try:
            await kube.create(SECRETS, namespace, body)
        except AlreadyExists:
            return False
        return True

    async def read() -> dict | None:
        try:
            return await kube.get(SECRETS, namespace, SECRET_NAME)
        except NotFound:
            return None

    identity = await ensure_identity(create, read, namespace)
    return identity.public_pem.decode()


class PublicKeyLoader:
    """Fetches the key once, in the background; `key` is None until then."""

    def __init__(self, kube: Any, namespace: str, *, first_delay: float = 0.1,
                 max_delay: float = 10.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.key: str | None = None
        self.loaded = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._on_loaded: list[Any] = []

    def on_loaded(self, callback: Any) -> None:
        """Call `callback()` once the key is known (at once if it already is)."""
        if self.key is not None:
            callback()
        else:
            self._on_loaded.append(callback)

    def start(self) -> None:
        if self.key is None and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    async def _run(self) -> None:
        delay = self.first_delay
        while self.key is None:
            try:
                self.key = await load_public_key(self.kube, self.namespace)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is retried, with backoff
                log.warning("cannot load the router identity from Secret %s/%s (retrying in "
                            "%.1fs): %s", self.namespace, SECRET_NAME, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
        log.info("router public key loaded from Secret %s/%s", self.namespace, SECRET_NAME)
        self.loaded.set()
        for callback in self._on_loaded:
            callback()
        self._on_loaded.clear()
        self._task = None
