"""Channels capabilities over HTTP: minted with the gateway token, spent by header-less clients.

`POST /api/capabilities/channels` answers a `ws_url` to give `GatewayClient.ws_url` (or
`JUPYTER_GATEWAY_WS_URL`); nbclient then dials `<ws_url>/api/kernels/<id>/channels`, which the
route below serves as the ordinary channels WebSocket once the capability checks out.
"""

from __future__ import annotations

import math

from .. import capability
from .base import GatewayError
from .channels import KernelChannelsHandler
from .kernels import KernelsFace, timestamp


class ChannelsCapabilityHandler(KernelsFace):
    async def post(self) -> None:
        body = self.json_body(required=False)
        kernel_id, ttl = body.get("kernel_id"), body.get("ttl", capability.DEFAULT_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
                or not 0 < ttl <= capability.MAX_TTL:
            raise GatewayError(400, "BAD_REQUEST", f"'ttl' must be a number of seconds in (0, {capability.MAX_TTL:g}]")
        if kernel_id is not None:
            if not isinstance(kernel_id, str):
                raise GatewayError(400, "BAD_REQUEST", "'kernel_id' must be a kernel id (or left out for all kernels)")
            await self.kernel_record(kernel_id)
        try:
            granted, expires = capability.mint(self.gateway.token, kernel_id, ttl)
        except ValueError:
            raise GatewayError(400, "BAD_REQUEST", f"'kernel_id' {kernel_id!r} is not a kernel id") from None
        scheme = "wss" if self.request.protocol == "https" else "ws"
        self.write_json({"capability": granted, "kernel_id": kernel_id, "expires_at": timestamp(expires),
                         "ws_url": f"{scheme}://{self.request.host}{self.base_url.rstrip('/')}/capability/{granted}"},
                        201)


class CapabilityChannelsHandler(KernelChannelsHandler):
    """The channels WebSocket under `/capability/<capability>/`: the capability stands in for
    the token (which such clients cannot send)."""

    async def get(self, granted: str, kernel_id: str) -> None:
        self.capability = granted
        await super().get(kernel_id)  # tornado then calls open(kernel_id), as for the plain route

    def authorized(self, kernel_id: str) -> bool:
        return capability.grants(self.extensionapp.token, self.capability, kernel_id) or super().authorized(kernel_id)


default_handlers = [
    (r"/api/capabilities/channels", ChannelsCapabilityHandler),
    (r"/capability/([\w.-]+)/api/kernels/([\w-]+)/channels", CapabilityChannelsHandler),
]
