"""Channels capabilities: what one grants (the channels of one kernel, or of all, until it
expires) and what it never grants (another kernel, REST, anything after expiry or with a
changed token); minted over HTTP with the gateway token and spent by a client that sends no
header at all, as nbclient's gateway client does."""

from __future__ import annotations

import json
import uuid

import pytest
from tornado.httpclient import HTTPClientError

from kernel_gateway_ext import capability

from .conftest import body
from .test_kernels_api import message, until

KERNEL = str(uuid.uuid4())
NOW = 1_800_000_000.0


def test_a_capability_opens_its_kernel_until_it_expires():
    granted, expires = capability.mint("t0ken", KERNEL, 60, now=NOW)
    assert expires == NOW + 60
    assert capability.grants("t0ken", granted, KERNEL, now=NOW + 59)
    assert not capability.grants("t0ken", granted, KERNEL, now=NOW + 60)
    assert not capability.grants("t0ken", granted, str(uuid.uuid4()), now=NOW)
    assert not capability.grants("other", granted, KERNEL, now=NOW)


def test_an_all_kernels_capability_cannot_be_stretched_or_retargeted():
    granted, _ = capability.mint("t0ken", None, 60, now=NOW)
    assert granted.startswith("all.") and capability.grants("t0ken", granted, KERNEL, now=NOW)
    scope, expires, signature = granted.split(".")
    for forged in (f"{scope}.{int(expires) + 3600}.{signature}", f"{KERNEL}.{expires}.{signature}",
                   f"{scope}.{expires}.{signature[:-1]}A", "", "all", f"{scope}.{expires}", granted + "."):
        assert not capability.grants("t0ken", forged, KERNEL, now=NOW), forged
    with pytest.raises(ValueError):
        capability.mint("t0ken", "../etc", 60)


async def _start(jp_fetch) -> str:
    return body(await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default"})))["id"]


async def _mint(jp_fetch, **request) -> dict:
    response = await jp_fetch("api", "capabilities", "channels", method="POST", body=json.dumps(request))
    assert response.code == 201
    return body(response)


async def test_a_header_less_client_runs_code_with_a_capability(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await _start(jp_fetch)
    minted = await _mint(jp_fetch, kernel_id=kernel_id, ttl=60)
    assert minted["kernel_id"] == kernel_id and minted["expires_at"].endswith("Z")
    assert minted["ws_url"].startswith("ws://") and minted["ws_url"].endswith(f"/capability/{minted['capability']}")
    conn = await jp_ws_fetch("capability", minted["capability"], "api", "kernels", kernel_id, "channels",
                             headers={"Authorization": ""})
    try:
        conn.write_message(message("execute_request", {"code": "6 * 7", "silent": False}, msg_id="m1"))
        result = await until(conn, lambda m: m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "42"
    finally:
        conn.close()
        while await conn.read_message() is not None:
            pass


async def test_a_capability_grants_nothing_else(jp_fetch, jp_ws_fetch, gateway):
    kernel_id, other_id = await _start(jp_fetch), await _start(jp_fetch)
    granted = (await _mint(jp_fetch, kernel_id=kernel_id))["capability"]
    no_header = {"Authorization": ""}
    for path, code in ((("capability", granted, "api", "kernels", other_id, "channels"), 401),  # another kernel
                       (("capability", "all.9999999999.forged", "api", "kernels", kernel_id, "channels"), 401),
                       (("api", "kernels", kernel_id, "channels"), 401)):  # no capability, no token
        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch(*path, headers=no_header)
        assert info.value.code == code, path
    # REST under the capability's prefix does not exist, and REST wants the token.
    for path in (("capability", granted, "api", "kernels"), ("capability", granted, "api", "kernels", kernel_id)):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(*path, headers=no_header)
        assert info.value.code in (401, 404), path


async def test_minting_is_checked(jp_fetch, gateway):
    for request, code in (({"ttl": 0}, 400), ({"ttl": "soon"}, 400), ({"ttl": 10**9}, 400),
                          ({"kernel_id": 7}, 400), ({"kernel_id": "not-a-kernel"}, 404),
                          ({"kernel_id": str(uuid.uuid4())}, 404)):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("api", "capabilities", "channels", method="POST", body=json.dumps(request))
        assert info.value.code == code, request
        assert set(json.loads(info.value.response.body)) == {"reason", "message"}
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "capabilities", "channels", method="POST", body="{}", headers={"Authorization": ""})
    assert info.value.code == 401
