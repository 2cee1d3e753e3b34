"""Sandbox providers: where sandboxes come from (local bubblewrap processes, or
Kubernetes pods in `kubernetes.py`, which only the app imports: it needs the `kubernetes` client)."""

from .base import Sandbox, SandboxProvider, SandboxStartError

__all__ = ["Sandbox", "SandboxProvider", "SandboxStartError"]
