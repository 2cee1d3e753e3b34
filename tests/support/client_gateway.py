"""A gateway for the client and integration tests: a real `kernelcube` process with a small
warm pool and a second template (`alt`, cold-started), stopped by the tests; at the end no
session may be left behind (every client test ends what it starts)."""

from __future__ import annotations

import json

import requests

from .gateway import HEADERS, TOKEN, Gateway
from .redis import free_port

TEMPLATES = {"default": {"pool_size": 2}, "alt": {"pool_size": 0}}

__all__ = ["HEADERS", "TOKEN", "start_gateway", "stop_gateway", "sessions_on"]


def start_gateway(state_dir: str) -> Gateway:
    return Gateway(state_dir, free_port(), pool_size=2, env={"KERNELCUBE_TEMPLATES": json.dumps(TEMPLATES)})


def sessions_on(gateway: Gateway) -> list[str]:
    answer = requests.get(f"{gateway.url}/v1/sessions", headers=HEADERS, timeout=30)
    answer.raise_for_status()
    return [s["session_id"] for s in answer.json()["sessions"]]


def stop_gateway(gateway: Gateway) -> None:
    left = sessions_on(gateway)
    code = gateway.stop()
    assert not left, f"sessions left running: {left}"
    assert code == 0, gateway.log[-3000:]
