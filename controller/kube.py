"""Kubernetes API access: the only module of the controller that imports the `kubernetes` client.

It uses the asyncio flavour of the official client (`kubernetes.aio`, shipped with client 37) for
what a client library is good at: kubeconfig and in-cluster configuration, token refresh, TLS and
a pooled aiohttp session. Objects travel as plain JSON dicts, never as generated models: the
reconcilers build raw merge patches, and (de)serialising pydantic models would cost more CPU than
the reconcile itself. Errors come out as `controller.errors` classes.

Two connection pools are used, one for writes and reads and one for long-lived watches, so that a
burst of writes never queues behind watch streams (upstream found a ~1 s event delay otherwise).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client import rest as krest

from controller.errors import ApiError, Gone, api_error
from controller.resources import Resource

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
_AUTH = ["BearerToken"]
# How long an idle connection to the API server is kept for the next call: a burst after a
# quiet spell (a pool refilling, claims arriving) otherwise pays a TLS handshake per connection
# (aiohttp's default is 15 s). Under the API server's own 90 s, so it never closes one first.
KEEPALIVE_SECONDS = 60.0


class _KeptAliveRest(krest.RESTClientObject):
    """The client's connection pool, with idle connections kept KEEPALIVE_SECONDS."""

    def _create_connector(self) -> aiohttp.TCPConnector:
        limit_per_host = getattr(self.configuration, "tcp_connector_limit_per_host", None)
        return aiohttp.TCPConnector(limit=self.maxsize, ssl=self.ssl_context,
                                    keepalive_timeout=KEEPALIVE_SECONDS,
                                    **({"limit_per_host": limit_per_host}
                                       if limit_per_host is not None else {}))


async def load_configuration(kubeconfig: str | None = None, context: str | None = None,
                             in_cluster: bool | None = None,
                             host: str | None = None) -> Any:
    """Build a client Configuration.

    `host` alone (tests, `kubectl proxy`) needs no credentials. Otherwise `in_cluster=True` reads
    the service account, `False` reads the kubeconfig, and `None` tries in-cluster first and then
    the kubeconfig (`$KUBECONFIG` or `~/.kube/config`).
    """
    configuration = kclient.Configuration()
    if host is not None:
        configuration.host = host.rstrip("/")
        return configuration
    if in_cluster is not False:
        try:
            kconfig.load_incluster_config(client_configuration=configuration)
            return configuration
        except kconfig.ConfigException:
            if in_cluster:
                raise
    await kconfig.load_kube_config(config_file=kubeconfig, context=context,
                                   client_configuration=configuration, persist_config=False)
    return configuration


class KubeClient:
    """Raw-JSON async access to the API server.

    Every method is a coroutine; nothing blocks the loop. Deletes are idempotent (404 is success).
    """

    def __init__(self, configuration: Any, *, connections: int = 100) -> None:
        configuration.connection_pool_maxsize = connections
        # The client's aiohttp session trusts the environment by default, which reads ~/.netrc
        # and the proxy variables in a thread on *every* request. Only do it if a proxy is set.
        proxied = any(os.environ.get(v) for v in PROXY_VARIABLES)
        extra = dict(getattr(configuration, "client_session_kwargs", None) or {})
        extra.setdefault("trust_env", proxied)
        configuration.client_session_kwargs = extra
        self._api = kclient.ApiClient(configuration)
        self._api.rest_client = _KeptAliveRest(configuration)
        self._watch_api = kclient.ApiClient(configuration)  # its own aiohttp session and pool
        self.requests = 0  # API calls made, for tests and benchmarks (writes are what matter)
        self.writes = 0

    @classmethod
    async def connect(cls, **kwargs: Any) -> KubeClient:
        """Load the configuration (see `load_configuration`) and return a client."""
        return cls(await load_configuration(**kwargs))

    async def close(self) -> None:
        await self._api.close()
        await self._watch_api.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _send(self, api: Any, method: str, path: str, query: list[tuple[str, str]] | None,
                    body: Any, content_type: str | None, timeout: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _method, url, headers, _body, _post = await api.param_serialize(
            method, path, query_params=query or [], header_params=headers, auth_settings=_AUTH)
        self.requests += 1
        if method != "GET":
            self.writes += 1
        try:
            return await api.call_api(method, url, header_params=headers, body=body,
                                      _request_timeout=timeout)
        except aiohttp.ClientError as exc:
            raise ApiError(0, "ConnectionError", str(exc)) from exc

    async def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                      body: Any = None, content_type: str | None = None) -> dict:
        response = await self._send(self._api, method, path, query, body, content_type)
        data = await response.read()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data[:200].decode("utf-8", "replace")}
        if response.status >= 400:
            raise api_error(response.status, decoded if isinstance(decoded, dict) else None)
        return decoded

    # -- verbs ------------------------------------------------------------------------------

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict:
        return await self.request("GET", res.path(namespace, name))

    async def list(self, res: Resource, namespace: str | None = None, *,
                   label_selector: str | None = None) -> dict:
        query = [("labelSelector", label_selector)] if label_selector else None
        return await self.request("GET", res.path(namespace), query=query)

    async def create(self, res: Resource, namespace: str | None, body: dict) -> dict:
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        return await self.request("POST", res.path(namespace), body=body,
                                  content_type="application/json")

    async def replace(self, res: Resource, namespace: str | None, name: str, body: dict) -> dict:
        """PUT: fails with `Conflict` when `metadata.resourceVersion` is stale."""
        return await self.request("PUT", res.path(namespace, name), body=body,
                                  content_type="application/json")

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict,
                    *, subresource: str | None = None) -> dict:
        """JSON merge patch (RFC 7386). A `metadata.resourceVersion` in it is a precondition."""
        return await self.request("PATCH", res.path(namespace, name, subresource), body=patch,
                                  content_type=MERGE_PATCH)

    async def patch_status(self, res: Resource, namespace: str | None, name: str,
                           status: dict) -> dict:
        return await self.patch(res, namespace, name, {"status": status}, subresource="status")

    async def delete(self, res: Resource, namespace: str | None, name: str, *,
                     uid: str | None = None, propagation: str | None = None,
                     resource_version: str | None = None) -> bool:
        """Delete; True if this call deleted it, False if it was already gone (idempotent).
        `uid` and `resource_version` are preconditions (`Conflict` when they do not hold)."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if preconditions:
            body["preconditions"] = preconditions
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            await self.request("DELETE", res.path(namespace, name), body=body,
                               content_type="application/json")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(self, res: Resource, namespace: str | None, resource_version: str, *,
                    timeout_seconds: int = 300,
                    label_selector: str | None = None) -> AsyncIterator[dict]:
        """Stream watch events (`{"type", "object"}`) from `resource_version`.

        Ends when the server closes the stream; raises `Gone` on a 410 (in the HTTP status or
        as an ERROR event), so the caller lists again.
        """
        query = [("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("resourceVersion", resource_version), ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        response = await self._send(self._watch_api, "GET", res.path(namespace), query, None, None,
                                    timeout=timeout)
        raw = response.response
        try:
            if response.status >= 400:
                data = await response.read()
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                raise api_error(response.status, body)
            async for line in raw.content:
                line = line.strip()
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Gone(410, status.get("reason", "Expired"), status.get("message", ""))
                    raise api_error(int(status.get("code") or 500), status)
                yield event
        except aiohttp.ClientError as exc:
            raise ApiError(0, "ConnectionError", str(exc)) from exc
        finally:
            raw.release()
