"""The router identity Secret: its wire format (PKCS#1 private, PKIX public, labels), the race
between concurrent creators (one key results, and every creator ends up with it), a Secret that
already exists is read not replaced, and a broken one is refused with a clear error."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cryptography.hazmat.primitives import serialization

from controller.errors import ApiError
from controller.identity import PublicKeyLoader, load_public_key
from controller.resources import SECRETS
from kernelcube_wire import identity_secret as ids
from tests.controller import helpers as h


def test_secret_body_has_upstream_formats_and_labels():
    identity = ids.generate()
    body = ids.secret_body(identity, "agentcube")
    assert body["metadata"] == {"name": "picod-router-identity", "namespace": "agentcube",
                                "labels": {"app": "agentcube", "component": "router"}}
    assert body["type"] == "Opaque"
    private = base64.b64decode(body["data"]["private.pem"])
    public = base64.b64decode(body["data"]["public.pem"])
    assert private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")  # PKIX
    assert ids.from_secret(body) == identity
    key = serialization.load_pem_public_key(public)
    assert key.key_size == 2048


def test_a_secret_without_a_usable_key_is_refused():
    with pytest.raises(ids.IdentityError, match="no private.pem"):
        ids.from_secret({"data": {"public.pem": "eA=="}})
    with pytest.raises(ids.IdentityError, match="not a PEM private key"):
        ids.from_secret({"data": {"private.pem": base64.b64encode(b"junk").decode()}})


@pytest.mark.asyncio
async def test_concurrent_creators_end_up_with_one_key(cluster):
    clients = [await cluster.client() for _ in range(6)]
    try:
        keys = await asyncio.gather(*(load_public_key(c, h.NS) for c in clients))
    finally:
        for c in clients:
            await c.close()
    (secret,) = cluster.api.objects("secrets", h.NS)
    assert len(set(keys)) == 1
    assert keys[0] == base64.b64decode(secret["data"]["public.pem"]).decode()
    assert cluster.api.statuses[("POST", "secrets", 201)] == 1
    assert cluster.api.statuses[("POST", "secrets", 409)] >= 1  # they did race


@pytest.mark.asyncio
async def test_an_existing_secret_is_read_and_its_private_key_wins(cluster):
    theirs = ids.generate()
    body = ids.secret_body(theirs, h.NS)
    body["data"]["public.pem"] = base64.b64encode(ids.generate().public_pem).decode()  # stale
    await cluster.kube.create(SECRETS, h.NS, body)
    assert await load_public_key(cluster.kube, h.NS) == theirs.public_pem.decode()
    assert ("POST", "secrets", 409) not in cluster.api.statuses


@pytest.mark.asyncio
async def test_the_loader_retries_until_the_namespace_answers(cluster):
    loader = PublicKeyLoader(cluster.kube, "missing-ns", first_delay=0.01)
    # The fake server accepts any namespace, so make the first attempts fail another way.
    real_get, calls = cluster.kube.get, []

    async def flaky_get(*args, **kwargs):
        calls.append(args)
        if len(calls) < 3:
            raise ApiError(503, "ServiceUnavailable", "try later")
        return await real_get(*args, **kwargs)

    cluster.kube.get = flaky_get
    seen = []
    loader.on_loaded(lambda: seen.append(loader.key))
    loader.start()
    await asyncio.wait_for(loader.loaded.wait(), 5)
    assert seen == [loader.key] and loader.key.startswith("-----BEGIN PUBLIC KEY-----")
    assert len(calls) >= 3
    await loader.stop()
