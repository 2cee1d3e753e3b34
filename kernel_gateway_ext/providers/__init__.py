"""Sandbox providers: where sandboxes come from (local bubblewrap processes, later Kubernetes)."""

from .base import Sandbox, SandboxProvider, SandboxStartError

__all__ = ["Sandbox", "SandboxProvider", "SandboxStartError"]
