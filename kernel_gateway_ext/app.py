"""`KernelCubeApp`: the gateway as a jupyter-server extension, launched by `kernelcube`.

Every option is a trait with its `KERNELCUBE_*` environment variable named in the help; the
common ones have command-line aliases (`kernelcube --help-all` lists them all).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys

from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Enum, Float, Int, Unicode, default, validate

from .handlers import agentcube, execute, health
from .identity import Identity
from .metrics import Metrics
from .pool import Capacity, WarmPool
from .providers.bwrap import find_bwrap
from .providers.local import LocalProvider
from .providers.userns import DEFAULT_BASE as DEFAULT_UID_BASE
from .providers.userns import UsernsError
from .sessions import SessionManager
from .store import MemoryStore, make_store
from .templates import TemplateError, load_templates

# When launched as `kernelcube`, the server offers only these of jupyter-server's own services:
# no contents or files API (the gateway's disk is not the users'), no local kernels.
GATEWAY_SERVICES = ("api", "auth", "security")


def _env(name: str, fallback: str = "") -> str:
    return os.environ.get(name, fallback)


class KernelCubeApp(ExtensionApp):
    name = "kernelcube"
    description = ("KernelCube: a code-interpreter gateway. Sessions get fresh, isolated sandboxes with a "
                   "live Jupyter kernel, drawn from warm pools, through the AgentCube API and a plain "
                   "HTTP execute API.")
    extension_url = "/v1/sessions"
    load_other_extensions = False
    open_browser = False

    aliases = {
        "ip": "ServerApp.ip",
        "port": "ServerApp.port",
        "token": "IdentityProvider.token",
        "backend": "KernelCubeApp.backend",
        "pool-size": "KernelCubeApp.pool_size",
        "redis-url": "KernelCubeApp.redis_url",
        "isolation": "KernelCubeApp.isolation",
        "state-dir": "KernelCubeApp.state_dir",
        "sandbox-python": "KernelCubeApp.sandbox_python",
        "max-sandboxes": "KernelCubeApp.max_sandboxes",
        "sandbox-uid-base": "KernelCubeApp.sandbox_uid_base",
    }

    backend = Enum(["local", "kubernetes"], config=True,
                   help="Where sandboxes run: 'local' (bubblewrap processes on this machine) or "
                        "'kubernetes' (pods). Env: KERNELCUBE_BACKEND.")
    pool_size = Int(config=True, help="Ready sandboxes kept warm for the 'default' template (other "
                                      "templates set their own). Env: KERNELCUBE_POOL_SIZE.")
    redis_url = Unicode(config=True, help="Session store: empty for in-memory (sessions end with the "
                                          "gateway), or redis://host:port/db (sessions survive restarts "
                                          "and are shared by replicas). Env: KERNELCUBE_REDIS_URL.")
    isolation = Enum(["bwrap", "none"], config=True,
                     help="Local sandbox isolation: 'bwrap' (bubblewrap namespaces, no network, read-only "
                          "system) or 'none' (plain processes: for development only, user code then runs "
                          "with the gateway's rights). Env: KERNELCUBE_ISOLATION.")
    state_dir = Unicode(config=True, help="Directory for the signing key and local sandboxes. "
                                          "Env: KERNELCUBE_STATE_DIR.")
    sandbox_python = Unicode(config=True, help="Python of the sandboxes (needs ipykernel, tornado, pyjwt, "
                                               "jupyter_client); default: .sandbox-venv/bin/python in the "
                                               "working directory, built by `make install`. "
                                               "Env: KERNELCUBE_SANDBOX_PYTHON.")
    templates = Dict(config=True, help="Sandbox templates by name, e.g. {'big': {'pool_size': 1, "
                                       "'rlimits': {'as': 8e9}, 'network': True}}; see templates.py for "
                                       "every key. 'default' always exists. Env: KERNELCUBE_TEMPLATES (JSON).")
    max_sandboxes = Int(config=True, help="Most live sandboxes (warm, starting and in use) at once. "
                                          "Env: KERNELCUBE_MAX_SANDBOXES.")
    sandbox_uid_base = Int(config=True, help="First host uid/gid of the range the sandboxes' ids map to "
                                             "(65536 ids; none of them is host root, and no host account "
                                             "should use them). Env: KERNELCUBE_SANDBOX_UID_BASE.")
    max_parallel_starts = Int(2, config=True, help="Sandboxes a pool starts at the same time.")
    claim_timeout = Float(config=True, help="Seconds a new session may wait for a sandbox when its pool "
                                            "is empty. Env: KERNELCUBE_CLAIM_TIMEOUT.")
    execute_timeout = Float(config=True, help="Default execution timeout in seconds when a request gives "
                                              "none. Env: KERNELCUBE_EXECUTE_TIMEOUT.")
    reap_interval = Float(15.0, config=True, help="Seconds between reaper passes (idle and expired sessions).")
    max_body_bytes = Int(64 * 1024 * 1024, config=True, help="Largest request body accepted (413 above).")
    max_concurrent_requests = Int(1000, config=True,
                                  help="Router requests in flight before 429 (AgentCube's limit).")

    @default("backend")
    def _backend_default(self) -> str:
        return _env("KERNELCUBE_BACKEND", "local")

    @default("pool_size")
    def _pool_size_default(self) -> int:
        return int(_env("KERNELCUBE_POOL_SIZE", "2"))

    @default("sandbox_uid_base")
    def _sandbox_uid_base_default(self) -> int:
        return int(_env("KERNELCUBE_SANDBOX_UID_BASE", str(DEFAULT_UID_BASE)))

    @default("redis_url")
    def _redis_url_default(self) -> str:
        return _env("KERNELCUBE_REDIS_URL")

    @default("isolation")
    def _isolation_default(self) -> str:
        return _env("KERNELCUBE_ISOLATION", "bwrap")

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return _env("KERNELCUBE_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".local", "state", "kernelcube")

    @default("sandbox_python")
    def _sandbox_python_default(self) -> str:
        return _env("KERNELCUBE_SANDBOX_PYTHON") or os.path.abspath(os.path.join(".sandbox-venv", "bin", "python"))

    @default("templates")
    def _templates_default(self) -> dict:
        raw = _env("KERNELCUBE_TEMPLATES")
        return json.loads(raw) if raw else {}

    @default("max_sandboxes")
    def _max_sandboxes_default(self) -> int:
        return int(_env("KERNELCUBE_MAX_SANDBOXES", "32"))

    @default("claim_timeout")
    def _claim_timeout_default(self) -> float:
        return float(_env("KERNELCUBE_CLAIM_TIMEOUT", "60"))

    @default("execute_timeout")
    def _execute_timeout_default(self) -> float:
        return float(_env("KERNELCUBE_EXECUTE_TIMEOUT", "600"))

    @validate("pool_size", "max_sandboxes", "max_parallel_starts")
    def _non_negative(self, proposal):
        if proposal["value"] < 0 or (proposal["trait"].name != "pool_size" and proposal["value"] == 0):
            raise ValueError(f"{proposal['trait'].name} must be {'>= 0' if proposal['trait'].name == 'pool_size' else '>= 1'}")
        return proposal["value"]

    # -- launch ------------------------------------------------------------------------------

    @classmethod
    def make_serverapp(cls, **kwargs):
        serverapp = super().make_serverapp(**kwargs)
        serverapp.default_services = GATEWAY_SERVICES
        # jupyter-server refuses root because notebooks would run user code as root; here user code
        # runs only inside sandboxes without capabilities, never in the gateway process.
        serverapp.allow_root = True
        return serverapp

    @property
    def token(self) -> str:
        return self.serverapp.identity_provider.token

    def initialize_settings(self) -> None:
        logging.getLogger("kernelcube").handlers = self.log.handlers
        logging.getLogger("kernelcube").setLevel(self.log.level)
        logging.getLogger("kernelcube").propagate = False
        self._guard_unauthenticated_bind()
        if self.backend == "kubernetes":
            raise SystemExit("kernelcube: the kubernetes backend is not available in this release; "
                             "use --backend local")
        python = self._check_sandbox_python()
        if self.isolation == "bwrap" and find_bwrap() is None:
            raise SystemExit("kernelcube: bubblewrap (bwrap) is not installed, so sandboxes cannot be "
                             "isolated. Install it (apt-get install bubblewrap; `make install` does) or, "
                             "for development only, pass --isolation none.")
        if self.isolation == "none":
            self.log.warning("ISOLATION IS OFF (--isolation none): user code runs as plain processes "
                             "with this gateway's rights. Use this for development only.")
        try:
            templates = load_templates(self.templates, self.pool_size)
        except TemplateError as exc:
            raise SystemExit(f"kernelcube: {exc}") from None
        self.metrics = Metrics()
        self.store = make_store(self.redis_url or None)
        self.identity = Identity.load_or_create(os.path.join(self.state_dir, "identity"))
        try:
            self.provider = LocalProvider(self.state_dir, self.identity.public_pem, self.isolation, python,
                                          die_with_gateway=not self.store.persistent,
                                          uid_base=self.sandbox_uid_base)
        except (UsernsError, OSError) as exc:
            raise SystemExit(f"kernelcube: cannot prepare local sandboxes: {exc}") from None
        for note in self.provider.describe_isolation():
            (self.log.warning if note.startswith("WARNING") else self.log.info)(note.removeprefix("WARNING: "))
        self.capacity = Capacity(self.max_sandboxes)
        self.pools = {name: WarmPool(t, self.provider, self.capacity, self.metrics, self.max_parallel_starts)
                      for name, t in templates.items()}
        self.metrics.watch_pools(self.pools)
        self.sessions = SessionManager(self.store, self.provider, self.pools, templates, self.identity,
                                       self.capacity, self.metrics)
        self.router_in_flight = 0
        self._tasks: list[asyncio.Task] = []
        self._started = self._stopped = False

    def _guard_unauthenticated_bind(self) -> None:
        if self.token:
            return
        ip = self.serverapp.ip or "localhost"
        try:
            loopback = ip == "localhost" or ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.log.warning("no gateway token is configured, so KernelCube listens on 127.0.0.1 only "
                             "instead of %s; set --token (or KERNELCUBE_TOKEN) to serve other hosts", ip)
            self.serverapp.ip = "127.0.0.1"
        else:
            self.log.warning("no gateway token is configured: anyone who can reach %s may run code", ip)

    def _check_sandbox_python(self) -> str:
        python = self.sandbox_python
        if os.path.exists(python):
            return python
        self.log.warning("the sandbox Python %s does not exist (run `make install` to build it); falling "
                         "back to the gateway's own interpreter, so user code will see the gateway's packages",
                         python)
        return sys.executable

    def initialize_handlers(self) -> None:
        self.handlers.extend(health.default_handlers + agentcube.default_handlers + execute.default_handlers)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Start pools and the reaper once. A plain jupyter_server calls this through
        _start_jupyter_server_extension; handlers call it too, for hosts that never do."""
        if self._started:
            return
        self._started = True
        serverapp = self.serverapp
        try:
            await self.sessions.adopt()
        except Exception as exc:
            self.log.error("could not re-adopt sessions from the store: %s", exc)
        for pool in self.pools.values():
            pool.start()
        self._tasks.append(asyncio.ensure_future(self.sessions.run_reaper(self.reap_interval)))
        url = serverapp.connection_url.rstrip("/")
        auth = f" -H 'Authorization: token {self.token}'" if self.token else ""
        self.log.info("KernelCube gateway at %s  (token: %s)", url, self.token or "none: loopback only")
        self.log.info("try: curl -s%s -H 'Content-Type: application/json' -d '{\"code\": \"1+1\"}' %s/v1/execute",
                      auth, url)

    async def stop_extension(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self.pools.values():
            await pool.stop()
        ephemeral = isinstance(self.store, MemoryStore)
        try:
            await self.sessions.shutdown(end_sessions=ephemeral)
        except Exception as exc:
            self.log.error("could not end every session at shutdown: %s", exc)
        await self.provider.close()
        await self.store.close()
        self.log.info("KernelCube stopped%s", "" if ephemeral else "; sessions persist in the store")


def main(argv: list[str] | None = None) -> None:
    """The `kernelcube` command. KERNELCUBE_TOKEN is the gateway token (JUPYTER_TOKEN works too)."""
    token = os.environ.get("KERNELCUBE_TOKEN")
    if token is not None:
        os.environ.setdefault("JUPYTER_TOKEN", token)
    KernelCubeApp.launch_instance(argv)
