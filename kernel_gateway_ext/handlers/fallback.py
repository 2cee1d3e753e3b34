"""The answer to every path the gateway does not route, when launched as `kernelcube`: a JSON
404 in the API's error shape instead of jupyter-server's HTML page. Routed last, it also hides
jupyter-server's own pages (files, tree, login, ...), which have nothing to serve here."""

from __future__ import annotations

from .base import GatewayError, GatewayHandler


class NotFoundHandler(GatewayHandler):
    requires_token = False
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    async def admit(self) -> None:
        raise GatewayError(404, "NOT_FOUND", f"nothing is served at {self.request.method} {self.request.path}; "
                           "the HTTP execute API is under /v1/sessions and /v1/execute (described at "
                           "/v1/openapi.json), the AgentCube API under /v1/namespaces/..., operators' "
                           "endpoints at /health/live, /health/ready and /metrics")


default_handlers = [(r"/.*", NotFoundHandler)]
