"""The KernelCube tool provider: its credentials are the gateway's URL and token, checked by
listing the gateway's sessions (which needs the token and starts no sandbox)."""

from __future__ import annotations

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from kernelcube import CodeInterpreterClient, KernelCubeError


class KernelCubeProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        url = (credentials.get("kernelcube_url") or "").strip()
        if not url:
            raise ToolProviderCredentialValidationError("the KernelCube gateway URL is required")
        try:
            client = CodeInterpreterClient(url, credentials.get("kernelcube_token") or "", lazy=True,
                                           request_timeout=15)
        except ValueError as exc:
            raise ToolProviderCredentialValidationError(str(exc)) from None
        try:
            client.list_sessions()
        except KernelCubeError as exc:
            raise ToolProviderCredentialValidationError(f"the KernelCube gateway at {url} refused: {exc}") from None
        finally:
            client.close()
