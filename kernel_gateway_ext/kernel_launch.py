"""What a `POST /api/kernels` asks for, checked: the kernelspec, the launch budget, a chosen
kernel id and the environment to forward into the kernel.

jupyter_server's gateway client sends every `KERNEL_*` variable of its own process plus the
variables its `allowed_envs` names. `KERNEL_LAUNCH_TIMEOUT` bounds the claim (a cold start when
the pool is empty), `KERNEL_ID` picks the id (a UUID, as jupyter_server's routes require), and
all of them, `KERNEL_USERNAME` included, are set in the kernel's `os.environ`, as Enterprise
Gateway does. `KERNEL_WORKING_DIR` names a directory on the client's host; a sandbox has its own
workspace, so it is forwarded as a variable only.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

LAUNCH_TIMEOUT = "KERNEL_LAUNCH_TIMEOUT"
KERNEL_ID = "KERNEL_ID"
MAX_ENV_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BadLaunch(ValueError):
    """The request cannot be honoured as sent; the message says what to change."""


@dataclass
class Launch:
    name: str
    timeout: float
    kernel_id: str | None
    env: dict[str, str]


def parse_launch(body: dict, claim_timeout: float) -> Launch:
    name = body.get("name") or "default"
    env = body.get("env") or {}
    if not isinstance(name, str) or not isinstance(env, dict):
        raise BadLaunch("'name' must be a kernelspec name and 'env' an object")
    bad = [k for k, v in env.items() if not _NAME.match(k) or not isinstance(v, str) or "\0" in v]
    if bad:
        raise BadLaunch(f"'env' entries must map variable names to strings; refused: {sorted(bad)[:5]}")
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise BadLaunch(f"'env' is larger than {MAX_ENV_BYTES} bytes")
    timeout = claim_timeout
    if LAUNCH_TIMEOUT in env:
        try:
            timeout = float(env[LAUNCH_TIMEOUT])
        except ValueError:
            raise BadLaunch(f"{LAUNCH_TIMEOUT} must be a number of seconds, not {env[LAUNCH_TIMEOUT]!r}") from None
        if not 0 < timeout < float("inf"):
            raise BadLaunch(f"{LAUNCH_TIMEOUT} must be a positive number of seconds")
        timeout = min(timeout, claim_timeout)
    kernel_id = env.get(KERNEL_ID) or None
    if kernel_id is not None:
        try:
            kernel_id = str(uuid.UUID(kernel_id))
        except ValueError:
            raise BadLaunch(f"{KERNEL_ID} must be a UUID, not {kernel_id!r}") from None
    return Launch(name, timeout, kernel_id, dict(env))
