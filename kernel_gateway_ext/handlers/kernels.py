"""The Jupyter kernel face: kernelspecs, kernels and their channels, in the dialect jupyter_server's
gateway client (`--gateway-url`) and `GatewayKernelManager` speak.

A kernel *is* a session (kernel id = session id): one per code-interpreter template's sandbox,
reachable through the execute API and the Router too. The channels WebSocket is in `channels`.
"""

from __future__ import annotations

import datetime
import importlib.resources

from ..kernel_launch import BadLaunch, parse_launch
from ..sessions import UnknownSession
from .base import GatewayError, GatewayHandler
from .execute import kernel_action

LOGO = "logo-64x64.png"
NATIVE_KERNEL = "python3"
# PicoD's kernel states as Jupyter execution states (busy/idle reach clients on iopub)
KERNEL_STATES = {"ready": "idle", "starting": "starting", "restarting": "restarting", "dead": "dead", "failed": "dead"}


def kernelspec(template) -> dict:
    name = template.name
    return {"name": name,
            "spec": {"argv": [], "display_name": f"Python 3 (KernelCube: {name})", "language": "python",
                     "interrupt_mode": "message", "env": {},
                     "metadata": {"kernelcube": {"template": name, "network": template.network}}},
            "resources": {LOGO: f"/kernelspecs/{name}/{LOGO}"}}


def timestamp(epoch: float) -> str:
    """What the gateway client parses: six fractional digits and a literal Z, always."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KernelsFace(GatewayHandler):
    """Errors as the gateway client shows them: `{"reason", "message"}`."""

    def error_body(self, status: int, code: str, message: str) -> dict:
        return {"reason": code, "message": message}

    def code_interpreters(self) -> dict:
        return {name: t for name, t in self.sessions.templates.items() if t.kind == "code-interpreter"}

    def default_kernelspec(self) -> str:
        specs = self.code_interpreters()
        return "default" if "default" in specs else next(iter(specs), "")

    def model(self, record, state: str = "idle") -> dict:
        return {"id": record.session_id, "name": record.template, "last_activity": timestamp(record.last_activity),
                "execution_state": state, "connections": self.gateway.kernel_connections.get(record.session_id, 0)}

    async def live_model(self, record) -> dict:
        """The model with the kernel's state as its PicoD reports it now (one health call)."""
        status, health = await self.sessions.client(record).health()
        kernel = health.get("kernel")
        state = KERNEL_STATES.get(kernel, "dead")
        model = self.model(record, state)
        if state == "dead":
            model["reason"] = health.get("kernel_error") or (
                f"the kernel is {kernel}" if kernel else "the kernel's sandbox does not answer")
        return model

    async def kernel_record(self, kernel_id: str):
        record = await self.sessions.get(kernel_id)
        if record.kind != "code-interpreter":
            raise UnknownSession(kernel_id)
        return record


class KernelSpecsHandler(KernelsFace):
    def get(self) -> None:
        specs = self.code_interpreters()
        self.write_json({"default": self.default_kernelspec(),
                         "kernelspecs": {name: kernelspec(t) for name, t in specs.items()}})


class KernelSpecHandler(KernelsFace):
    def get(self, name: str) -> None:
        template = self.code_interpreters().get(name)
        if template is None:
            raise GatewayError(404, "NOT_FOUND", f"no kernelspec {name!r}; known: {sorted(self.code_interpreters())}")
        self.write_json(kernelspec(template))


class KernelSpecResourceHandler(KernelsFace):
    requires_token = False  # a logo, fetched by browsers without the token

    def get(self, name: str, resource: str) -> None:
        if name not in self.code_interpreters() or resource != LOGO:
            raise GatewayError(404, "NOT_FOUND", f"kernelspec {name!r} has no resource {resource!r}")
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "max-age=86400")
        self.finish(importlib.resources.files("kernel_gateway_ext").joinpath(LOGO).read_bytes())


class KernelsHandler(KernelsFace):
    async def get(self) -> None:
        records = [r for r in await self.sessions.list() if r.kind == "code-interpreter"]
        self.write_json([self.model(r) for r in records])

    async def post(self) -> None:
        """Start a kernel: claim a warm sandbox of the kernelspec's template (a session), then
        set the forwarded environment in its kernel."""
        try:
            launch = parse_launch(self.json_body(required=False), self.gateway.claim_timeout)
        except BadLaunch as exc:
            raise GatewayError(400, "BAD_REQUEST", str(exc)) from None
        if launch.name == NATIVE_KERNEL and NATIVE_KERNEL not in self.code_interpreters():
            # What GatewayKernelManager (nbclient, papermill) asks for whatever the notebook says,
            # and what notebooks written on a laptop name: the default kernel serves it.
            launch.name = self.default_kernelspec()
        if launch.name not in self.code_interpreters():
            raise GatewayError(404, "NOT_FOUND", f"no kernelspec {launch.name!r}; known: {sorted(self.code_interpreters())}")
        record = await self.sessions.create(launch.name, timeout=launch.timeout, session_id=launch.kernel_id)
        if launch.env:
            try:
                await self._set_env(record.session_id, launch.env)
            except BaseException:
                await self.sessions.delete(record.session_id, "launch-failed")
                raise
        self.set_header("Location", f"{self.base_url.rstrip('/')}/api/kernels/{record.session_id}")
        self.write_json(self.model(record, "idle"), 201)

    async def _set_env(self, kernel_id: str, env: dict[str, str]) -> None:
        async with self.sessions.use(kernel_id) as session:
            status, answer = await session.client.call_json("POST", "/api/kernel/env", {"env": env},
                                                            token=session.token, timeout=30)
        if status != 200:
            raise GatewayError(502, "SANDBOX_ERROR", f"could not set the kernel's environment: {answer}")


class KernelHandler(KernelsFace):
    async def get(self, kernel_id: str) -> None:
        self.write_json(await self.live_model(await self.kernel_record(kernel_id)))

    async def delete(self, kernel_id: str) -> None:
        await self.kernel_record(kernel_id)
        await self.sessions.delete(kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(KernelsFace):
    """`POST .../interrupt` (204) and `.../restart` (200 and the model; same kernel id)."""

    async def post(self, kernel_id: str, action: str) -> None:
        await self.kernel_record(kernel_id)
        async with self.sessions.use(kernel_id) as session:
            await kernel_action(session, action, timeout=120)
        if action == "interrupt":
            self.set_status(204)
            self.finish()
        else:
            self.write_json(self.model(session.record))


default_handlers = [
    (r"/api/kernelspecs", KernelSpecsHandler),
    (r"/api/kernelspecs/([^/]+)", KernelSpecHandler),
    (r"/kernelspecs/([^/]+)/([^/]+)", KernelSpecResourceHandler),
    (r"/api/kernels", KernelsHandler),
    (r"/api/kernels/([\w-]+)", KernelHandler),
    (r"/api/kernels/([\w-]+)/(interrupt|restart)", KernelActionHandler),
]
