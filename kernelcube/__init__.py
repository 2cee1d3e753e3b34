"""KernelCube's Python client: sessions on a KernelCube gateway, each a sandbox with a live
Jupyter kernel. It needs only httpx; the integrations (`kernelcube.langchain`,
`kernelcube.mcp_server`) import their frameworks when they are used."""

from .aio import AsyncCodeInterpreterClient
from .client import CodeInterpreterClient
from .errors import (
    AuthenticationError,
    CapacityError,
    CommandExecutionError,
    ExecutionTimeout,
    InvalidRequest,
    KernelCubeError,
    RemoteFileNotFound,
    SandboxError,
    SandboxGone,
    SessionNotFound,
    TemplateNotFound,
)
from .models import CommandResult, Execution, ExecutionError, Logs, Result

__all__ = [
    "AsyncCodeInterpreterClient",
    "AuthenticationError",
    "CapacityError",
    "CodeInterpreterClient",
    "CommandExecutionError",
    "CommandResult",
    "Execution",
    "ExecutionError",
    "ExecutionTimeout",
    "InvalidRequest",
    "KernelCubeError",
    "Logs",
    "RemoteFileNotFound",
    "Result",
    "SandboxError",
    "SandboxGone",
    "SessionNotFound",
    "TemplateNotFound",
]
