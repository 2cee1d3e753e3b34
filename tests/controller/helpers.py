"""Builders of agent-sandbox objects and a polling helper for the controller tests."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "kernelcube" / "crds"
NS = "default"


def template(name: str = "python", *, image: str = "picod:latest", **spec: Any) -> dict:
    body = {"metadata": {"name": name},
            "spec": {"podTemplate": {"metadata": {"labels": {"app": "kernel"}},
                                     "spec": {"containers": [{
                                         "name": "picod", "image": image,
                                         "ports": [{"containerPort": 8080, "name": "http"}]}]}}}}
    body["spec"].update(spec)
    return body


def pool(name: str = "python", template_name: str = "python", replicas: int = 3,
         strategy: str | None = None) -> dict:
    spec: dict = {"replicas": replicas, "sandboxTemplateRef": {"name": template_name}}
    if strategy:
        spec["updateStrategy"] = {"type": strategy}
    return {"metadata": {"name": name}, "spec": spec}


def claim(name: str, pool_name: str = "python", **spec: Any) -> dict:
    return {"metadata": {"name": name, "labels": {"agents.x-k8s.io/created-by": "python-client"}},
            "spec": {"warmPoolRef": {"name": pool_name}, **spec}}


def sandbox(name: str, **spec: Any) -> dict:
    return {"metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
                     **spec}}


def soon(seconds: float) -> str:
    """An RFC 3339 time `seconds` from now (for shutdownTime)."""
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ready(obj: dict | None) -> bool:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c["status"] == "True"
    return False


def reason(obj: dict | None) -> str | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c.get("reason")
    return None


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def code_interpreter(name: str = "ci", *, image: str = "picod:latest", **spec: Any) -> dict:
    """A CodeInterpreter (runtime.agentcube.volcano.sh/v1alpha1) as users write them."""
    return {"metadata": {"name": name},
            "spec": {"template": {"image": image, "args": ["--workspace=/root"]}, **spec}}


def agent_runtime(name: str = "agent", *, image: str = "agent:latest", port: int = 8080,
                  **spec: Any) -> dict:
    """An AgentRuntime with one container listening on `port`."""
    return {"metadata": {"name": name},
            "spec": {"targetPort": [{"port": port, "pathPrefix": "/"}],
                     "podTemplate": {"labels": {"app": name}, "spec": {"containers": [{
                         "name": "agent", "image": image,
                         "ports": [{"containerPort": port}]}]}},
                     **spec}}
