"""Authentication over HTTP: 401 bodies, attacks refused, tokens bound to the sandbox and,
once used, to one session."""

from __future__ import annotations

import time

import pytest


def test_missing_and_malformed_header(picod):
    response = picod.request("GET", "/api/files?path=.", auth=False)
    assert response.status_code == 401
    assert response.json() == {"error": "Missing Authorization header", "code": 401,
                               "detail": "Request requires JWT authentication"}
    response = picod.request("GET", "/api/files?path=.", headers={"Authorization": "bearer abc"})
    assert response.json() == {"error": "Invalid Authorization header format", "code": 401,
                               "detail": "Use Bearer <token>"}


@pytest.mark.parametrize(("claim", "offset"), [("exp", -600), ("iat", 600)])
def test_expired_or_future_token_refused(picod, claim, offset):
    # the time is taken now, not at collection: a long run must not age the token into validity
    token = picod.keys.token(**{claim: int(time.time()) + offset})
    response = picod.request("POST", "/api/execute", token=token, json={"command": ["true"]})
    assert response.status_code == 401
    assert response.json()["error"] == "Invalid token"
    assert response.json()["detail"].startswith("JWT verification failed: ")


def test_wrong_key_refused_on_every_api_route(picod):
    from tests.support.keys import KeyPair
    forged = KeyPair().token()
    for method, path in [("POST", "/api/execute"), ("POST", "/api/files"), ("GET", "/api/files?path=."),
                         ("GET", "/api/files/x"), ("POST", "/api/run"), ("POST", "/api/kernel/interrupt"),
                         ("POST", "/api/kernel/restart"), ("GET", "/api/kernel/channels")]:
        assert picod.request(method, path, token=forged).status_code == 401, path


def test_sandbox_and_session_binding(fresh_picod):
    picod = fresh_picod(env={"PICOD_SANDBOX_ID": "sb-a"})
    other_sandbox = picod.keys.token(sandbox="sb-b", session_id="s1")
    response = picod.request("POST", "/api/execute", token=other_sandbox, json={"command": ["true"]})
    assert response.status_code == 401 and "this sandbox" in response.json()["detail"]

    first = picod.keys.token(sandbox="sb-a", session_id="s1")
    assert picod.request("POST", "/api/execute", token=first, json={"command": ["true"]}).status_code == 200
    intruder = picod.keys.token(sandbox="sb-a", session_id="s2")
    response = picod.request("POST", "/api/execute", token=intruder, json={"command": ["true"]})
    assert response.status_code == 401 and "another session" in response.json()["detail"]
    again = picod.keys.token(sandbox="sb-a", session_id="s1")
    assert picod.request("POST", "/api/execute", token=again, json={"command": ["true"]}).status_code == 200
