"""The router identity Secret `picod-router-identity`: its body, and race-safe create-or-read.

AgentCube's contract (agentcube-api.md §2.5, §3.5): an Opaque Secret in the AgentCube namespace,
labels `app=agentcube`, `component=router`, data `private.pem` (PKCS#1 `RSA PRIVATE KEY` PEM)
and `public.pem` (PKIX `PUBLIC KEY` PEM). Every gateway replica signs PicoD tokens with the
private key; the controller injects the public key into sandbox pods as PICOD_AUTH_PUBLIC_KEY.

Whoever comes first (a gateway replica or the controller) creates it; everyone else reads it.
The API server's create is the arbiter: a 409 AlreadyExists means another process won, and its
key is used, so concurrent starters always end up with one key. The public key is derived from
`private.pem` (as upstream's Router does) rather than trusted from `public.pem`, so the pods
verify exactly what the gateways sign.

`ensure_identity` takes two small callables instead of a client, so the gateway and the
controller each use their own Kubernetes client with it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

SECRET_NAME = "picod-router-identity"
PRIVATE_KEY = "private.pem"
PUBLIC_KEY = "public.pem"
LABELS = {"app": "agentcube", "component": "router"}
KEY_SIZE = 2048


class IdentityError(Exception):
    """The Secret exists but holds no usable key; an operator must fix or delete it."""


@dataclass(frozen=True)
class RouterIdentity:
    private_pem: bytes  # PKCS#1 "RSA PRIVATE KEY"
    public_pem: bytes  # PKIX "PUBLIC KEY"

    def private_key(self) -> rsa.RSAPrivateKey:
        """The key object (loading costs ~35 ms: do it once and keep it)."""
        return _load_private(self.private_pem)


def generate() -> RouterIdentity:
    """A fresh RSA-2048 pair in the Secret's PEM formats."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return RouterIdentity(private, _public_pem(key))


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_private(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{PRIVATE_KEY} of Secret {SECRET_NAME} is not a PEM private key: "
                            f"{exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IdentityError(f"{PRIVATE_KEY} of Secret {SECRET_NAME} holds a "
                            f"{type(key).__name__}; an RSA key is required")
    return key


def secret_body(identity: RouterIdentity, namespace: str) -> dict:
    """The Secret to create (core/v1, Opaque, base64 data)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET_NAME, "namespace": namespace, "labels": dict(LABELS)},
            "data": {PRIVATE_KEY: base64.b64encode(identity.private_pem).decode(),
                     PUBLIC_KEY: base64.b64encode(identity.public_pem).decode()}}


def from_secret(secret: dict) -> RouterIdentity:
    """The identity held by a Secret read from the API; IdentityError if it holds none."""
    data = secret.get("data") or {}
    if not data.get(PRIVATE_KEY):
        raise IdentityError(f"Secret {SECRET_NAME} has no {PRIVATE_KEY}; delete it so that a "
                            "new identity is created, or add the key")
    try:
        private = base64.b64decode(data[PRIVATE_KEY], validate=True)
    except ValueError as exc:
        raise IdentityError(f"{PRIVATE_KEY} of Secret {SECRET_NAME} is not base64: {exc}") from exc
    return RouterIdentity(private, _public_pem(_load_private(private)))


# create(body) -> True if created, False on 409 AlreadyExists; read() -> the Secret, or None
# when it does not exist. Both raise on any other error.
Create = Callable[[dict], Awaitable[bool]]
Read = Callable[[], Awaitable[dict | None]]


async def ensure_identity(create: Create, read: Read, namespace: str,
                          attempts: int = 3) -> RouterIdentity:
    """Read the Secret, creating it first if nobody has; the same key for every caller.

    Read first: once the Secret exists (the usual case) no key is generated at all. On a lost
    create race the winner's Secret is read. If it vanished again in between (deleted by an
    operator), try again a few times.
    """
    for _ in range(attempts):
        existing = await read()
        if existing is not None:
            return await asyncio.to_thread(from_secret, existing)  # loading costs ~35 ms
        mine = await asyncio.to_thread(generate)  # RSA generation takes ~50 ms of CPU
        if await create(secret_body(mine, namespace)):
            log.info("created the router identity Secret %s/%s", namespace, SECRET_NAME)
            return mine
        log.info("router identity Secret %s/%s was created by another process; using it",
                 namespace, SECRET_NAME)
    raise IdentityError(f"Secret {namespace}/{SECRET_NAME} kept disappearing while it was "
                        "being created or read")
