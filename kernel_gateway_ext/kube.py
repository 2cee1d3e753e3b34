"""Kubernetes API access for the gateway: the only module of the package that imports `kubernetes`.

It uses the asyncio flavour of the official client (`kubernetes.aio`) for configuration
(kubeconfig, in-cluster service account, token refresh, TLS) and its pooled aiohttp session, so
no call ever blocks the event loop. Objects travel as plain JSON dicts. Errors come out as the
classes below, never as the client library's. Watches use a connection pool of their own, so a
burst of claims never queues behind long-lived watch streams.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client import rest as krest

MERGE_PATCH = "application/merge-patch+json"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
_AUTH = ["BearerToken"]
# How long an idle connection to the API server is kept for the next call. aiohttp's default
# (15 s) made a burst of sessions after a quiet spell pay one TLS handshake per connection it
# opened: a sixth of the gateway's CPU in a burst of 100 on 2 cores. The API server closes
# connections idle for 90 s; closing ours first means never sending on one it is closing.
KEEPALIVE_SECONDS = 60.0


class KubeError(Exception):
    """An error answer of the API server (or no answer: status 0)."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    """404: the object, or its kind (a CRD that is not installed), does not exist."""


class Conflict(KubeError):
    """409: a stale resourceVersion, a failed precondition, or (on create) a name in use."""


class Gone(KubeError):
    """410: a watch's resourceVersion is too old; list again."""


def _error(status: int, body: dict | None) -> KubeError:
    body = body or {}
    reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
    cls = {404: NotFound, 409: Conflict, 410: Gone}.get(status, KubeError)
    return cls(status, reason, message)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


CODE_INTERPRETERS = Resource("runtime.agentcube.volcano.sh", "v1alpha1", "codeinterpreters", "CodeInterpreter")
AGENT_RUNTIMES = Resource("runtime.agentcube.volcano.sh", "v1alpha1", "agentruntimes", "AgentRuntime")
SANDBOXES = Resource("agents.x-k8s.io", "v1beta1", "sandboxes", "Sandbox")
CLAIMS = Resource("extensions.agents.x-k8s.io", "v1beta1", "sandboxclaims", "SandboxClaim")
WARMPOOLS = Resource("extensions.agents.x-k8s.io", "v1beta1", "sandboxwarmpools", "SandboxWarmPool")
PODS = Resource("", "v1", "pods", "Pod")
SECRETS = Resource("", "v1", "secrets", "Secret")


async def load_configuration(*, kubeconfig: str = "", context: str = "", in_cluster: str = "auto",
                             api_url: str = "") -> Any:
    """A client Configuration. `api_url` alone (a `kubectl proxy`) needs no credentials;
    otherwise `in_cluster` "true" reads the pod's service account, "false" the kubeconfig
    (`kubeconfig`, else $KUBECONFIG or ~/.kube/config), and "auto" tries in-cluster first."""
    configuration = kclient.Configuration()
    if api_url:
        configuration.host = api_url.rstrip("/")
        return configuration
    if in_cluster != "false":
        try:
            kconfig.load_incluster_config(client_configuration=configuration)
            return configuration
        except kconfig.ConfigException:
            if in_cluster == "true":
                raise
    await kconfig.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                   client_configuration=configuration, persist_config=False)
    return configuration


class _KeptAliveRest(krest.RESTClientObject):
    """The client's connection pool, with idle connections kept KEEPALIVE_SECONDS."""

    def _create_connector(self) -> aiohttp.TCPConnector:
        limit_per_host = getattr(self.configuration, "tcp_connector_limit_per_host", None)
        return aiohttp.TCPConnector(limit=self.maxsize, ssl=self.ssl_context, keepalive_timeout=KEEPALIVE_SECONDS,
                                    **({"limit_per_host": limit_per_host} if limit_per_host is not None else {}))


class KubeApi:
    """Raw-JSON async access to the API server. Every method is a coroutine."""

    def __init__(self, configuration: Any, *, connections: int = 64) -> None:
        configuration.connection_pool_maxsize = connections
        # The client's aiohttp session trusts the environment by default, which reads ~/.netrc
        # and the proxy variables in a thread on every request; only do so if a proxy is set.
        extra = dict(getattr(configuration, "client_session_kwargs", None) or {})
        extra.setdefault("trust_env", any(os.environ.get(v) for v in PROXY_VARIABLES))
        configuration.client_session_kwargs = extra
        self._api = kclient.ApiClient(configuration)
        self._api.rest_client = _KeptAliveRest(configuration)
        self._watch_api = kclient.ApiClient(configuration)

    @classmethod
    async def connect(cls, **kwargs: Any) -> KubeApi:
        return cls(await load_configuration(**kwargs))

    async def close(self) -> None:
        await self._api.close()
        await self._watch_api.close()

    async def _send(self, api: Any, method: str, path: str, query: list | None, body: Any,
                    content_type: str | None, timeout: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _method, url, headers, _body, _post = await api.param_serialize(
            method, path, query_params=query or [], header_params=headers, auth_settings=_AUTH)
        try:
            return await api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(0, "ConnectionError", str(exc) or type(exc).__name__) from exc

    async def request(self, method: str, path: str, *, query: list | None = None, body: Any = None,
                      content_type: str | None = None) -> dict:
        response = await self._send(self._api, method, path, query, body, content_type)
        data = await response.read()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data[:200].decode("utf-8", "replace")}
        if response.status >= 400:
            raise _error(response.status, decoded if isinstance(decoded, dict) else None)
        return decoded

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict:
        return await self.request("GET", res.path(namespace, name))

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str = "") -> dict:
        query = [("labelSelector", label_selector)] if label_selector else None
        return await self.request("GET", res.path(namespace), query=query)

    async def create(self, res: Resource, namespace: str | None, body: dict) -> dict:
        body = {"apiVersion": res.api_version, "kind": res.kind, **body}
        return await self.request("POST", res.path(namespace), body=body, content_type="application/json")

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict) -> dict:
        """A JSON merge patch; a `metadata.resourceVersion` in it is a precondition (409 if stale)."""
        return await self.request("PATCH", res.path(namespace, name), body=patch, content_type=MERGE_PATCH)

    async def delete(self, res: Resource, namespace: str | None, name: str, *, uid: str = "") -> bool:
        """Delete (background propagation); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", res.path(namespace, name), body=body, content_type="application/json")
        except NotFound:
            return False
        return True

    async def watch(self, res: Resource, namespace: str | None, resource_version: str, *,
                    timeout_seconds: int = 300, label_selector: str = "") -> AsyncIterator[dict]:
        """Watch events (`{"type", "object"}`) from `resource_version` until the server ends the
        stream; `Gone` on 410 (as a status or an ERROR event) so that the caller lists again."""
        query = [("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("resourceVersion", resource_version), ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        response = await self._send(self._watch_api, "GET", res.path(namespace), query, None, None, timeout)
        raw = response.response
        try:
            if response.status >= 400:
                data = await response.read()
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                raise _error(response.status, body if isinstance(body, dict) else None)
            async for line in raw.content:
                line = line.strip()
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise _error(int(status.get("code") or 500), status)
                yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(0, "ConnectionError", str(exc) or type(exc).__name__) from exc
        finally:
            raw.release()
