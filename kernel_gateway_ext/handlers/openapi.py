"""`GET /v1/openapi.json`: the OpenAPI 3.1 description of the HTTP execute API, shipped in the
package. Served without a token: it describes the API and holds nothing secret, so clients
and tools can read it before they have one."""

from __future__ import annotations

import functools
from importlib import resources

from .base import GatewayHandler


@functools.cache
def openapi_document() -> bytes:
    return resources.files("kernel_gateway_ext").joinpath("openapi.json").read_bytes()


class OpenAPIHandler(GatewayHandler):
    requires_token = False

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(openapi_document())


default_handlers = [(r"/v1/openapi.json", OpenAPIHandler)]
