"""`KernelCubeApp`: the gateway as a jupyter-server extension, launched by `kernelcube`.

Every option is a trait with its `KERNELCUBE_*` environment variable named in the help; the
common ones have command-line aliases (`kernelcube --help-all` lists them all).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import ipaddress
import logging
import os
import re
import sys

from jupyter_server.auth.identity import IdentityProvider
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, Unicode, default, validate

from picod_kernel.limits import MAX_BODY_BYTES

from .admission import BodyBudget, FairLimiter
from .envconfig import ConfigError, env_bool, env_float, env_int, env_json_object, env_str
from .handlers import agentcube, capabilities, channels, execute, fallback, health, kernels, openapi
from .identity import Identity
from .metrics import Metrics
from .pool import Capacity, WarmPool
from .providers.bwrap import find_bwrap
from .providers.local import LocalProvider
from .providers.userns import DEFAULT_BASE as DEFAULT_UID_BASE
from .providers.userns import RANGE, UsernsError
from .sessions import SessionManager
from .store import MemoryStore, make_store
from .templates import TemplateError, load_templates

# When launched as `kernelcube`, the server offers none of jupyter-server's own services (no
# contents, files, view, nbconvert or local kernels: the gateway's disk is not the users'), and
# the gateway's JSON 404 answers every path it does not route (see `initialize_handlers`).
GATEWAY_SERVICES: tuple[str, ...] = ()
STANDALONE = "_kernelcube_standalone"  # marks a ServerApp made by `kernelcube` itself


# The environment variable behind each setting that has one, to name it in errors.
ENV_NAMES = {"backend": "KERNELCUBE_BACKEND", "pool_size": "KERNELCUBE_POOL_SIZE",
             "redis_url": "KERNELCUBE_REDIS_URL", "isolation": "KERNELCUBE_ISOLATION",
             "state_dir": "KERNELCUBE_STATE_DIR", "sandbox_python": "KERNELCUBE_SANDBOX_PYTHON",
             "templates": "KERNELCUBE_TEMPLATES", "max_sandboxes": "KERNELCUBE_MAX_SANDBOXES",
             "claim_timeout": "KERNELCUBE_CLAIM_TIMEOUT", "execute_timeout": "KERNELCUBE_EXECUTE_TIMEOUT",
             "relay_timeout": "KERNELCUBE_RELAY_TIMEOUT", "namespaces": "KERNELCUBE_NAMESPACES",
             "kubeconfig": "KERNELCUBE_KUBECONFIG", "kube_context": "KERNELCUBE_KUBE_CONTEXT",
             "in_cluster": "KERNELCUBE_IN_CLUSTER", "kube_api_url": "KERNELCUBE_KUBE_API_URL",
             "identity_namespace": "KERNELCUBE_IDENTITY_NAMESPACE",
             "warm_adoption": "KERNELCUBE_WARM_ADOPTION", "kernel_zygote": "KERNELCUBE_KERNEL_ZYGOTE"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _setting(name: str) -> str:
    return f"{name} ({ENV_NAMES[name]})" if name in ENV_NAMES else name


def _version() -> str:
    try:
        return importlib.metadata.version("kernelcube")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class KernelCubeApp(ExtensionApp):
    name = "kernelcube"
    version = _version()
    description = ("KernelCube: a code-interpreter gateway. Sessions get fresh, isolated sandboxes with a "
                   "live Jupyter kernel, drawn from warm pools, through the AgentCube API and a plain "
                   "HTTP execute API.")
    extension_url = "/v1/sessions"
    load_other_extensions = False
    open_browser = False
    # The `token` alias points at IdentityProvider, so --help must know that class too.
    classes = [*ExtensionApp.classes, IdentityProvider]
    _started = _stopped = False  # until initialize_settings; a failed start must still stop cleanly

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
        "kernel-zygote": "KernelCubeApp.kernel_zygote",
        "namespaces": "KernelCubeApp.namespaces",
        "kubeconfig": "KernelCubeApp.kubeconfig",
        "kube-context": "KernelCubeApp.kube_context",
        "in-cluster": "KernelCubeApp.in_cluster",
        "kube-api-url": "KernelCubeApp.kube_api_url",
        "identity-namespace": "KernelCubeApp.identity_namespace",
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
    sandbox_python = Unicode(config=True, help="Python of the sandboxes (needs what "
                                               "sandbox-requirements.txt lists: ipykernel, pyzmq, httptools, "
                                               "wsproto, pyjwt...); default: .sandbox-venv/bin/python in the "
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
    kernel_zygote = Enum(["on", "off"], config=True,
                         help="Local sandboxes: 'on' forks each warm kernel from a zygote per sandbox Python "
                              "and preload (a process that imported ipykernel and the preload once), so kernels "
                              "share those pages and start quickly; 'off' spawns every kernel. Needs bubblewrap "
                              "and a gateway running as root; otherwise kernels are spawned. "
                              "Env: KERNELCUBE_KERNEL_ZYGOTE.")
    max_parallel_starts = Int(2, config=True, help="Sandboxes a pool starts at the same time.")
    claim_timeout = Float(config=True, help="Seconds a new session may wait for a sandbox when its pool "
                                            "is empty. Env: KERNELCUBE_CLAIM_TIMEOUT.")
    execute_timeout = Float(config=True, help="Default execution timeout in seconds when a request gives "
                                              "none. Env: KERNELCUBE_EXECUTE_TIMEOUT.")
    reap_interval = Float(15.0, config=True, help="Seconds between reaper passes (idle and expired sessions).")
    max_body_bytes = Int(MAX_BODY_BYTES, config=True,
                         help="Largest request body accepted (413 above); by default the same limit "
                              "as PicoD's, so every hop agrees.")
    max_buffered_bytes = Int(8 * MAX_BODY_BYTES, config=True,
                             help="Request bodies held in memory at once, all requests together; an "
                                  "upload beyond it gets 503 with Retry-After.")
    max_concurrent_requests = Int(1000, config=True,
                                  help="Router requests in flight before 429 (AgentCube's limit).")
    max_session_share = Float(0.25, config=True,
                              help="Fraction of max_concurrent_requests one session may hold in flight "
                                   "on the Router (at least 1); beyond it that session gets 429 with "
                                   "Retry-After while the others proceed.")
    relay_timeout = Float(config=True,
                          help="Seconds a relayed Router call may wait for the sandbox to send anything "
                               "(504 after). Env: KERNELCUBE_RELAY_TIMEOUT.")

    # -- the kubernetes backend --
    namespaces = Unicode(config=True, help="Kubernetes backend: namespaces to watch, comma-separated; their "
                                           "CodeInterpreters and AgentRuntimes are the templates (the first "
                                           "namespace's by their name, the others' as '<namespace>/<name>'). "
                                           "Default: 'default'. Env: KERNELCUBE_NAMESPACES.")
    kubeconfig = Unicode(config=True, help="Kubernetes backend: the kubeconfig file (default: $KUBECONFIG or "
                                           "~/.kube/config). Env: KERNELCUBE_KUBECONFIG.")
    kube_context = Unicode(config=True, help="Kubernetes backend: the kubeconfig context (default: its current "
                                             "one). Env: KERNELCUBE_KUBE_CONTEXT.")
    in_cluster = Enum(["auto", "true", "false"], config=True,
                      help="Kubernetes backend: 'true' uses the pod's service account only, 'false' the "
                           "kubeconfig only, 'auto' the service account when there is one, else the "
                           "kubeconfig. Env: KERNELCUBE_IN_CLUSTER.")
    kube_api_url = Unicode(config=True, help="Kubernetes backend: an API server URL to use without credentials "
                                             "(e.g. `kubectl proxy`); overrides the kubeconfig and service "
                                             "account. Env: KERNELCUBE_KUBE_API_URL.")
    identity_namespace = Unicode(config=True, help="Kubernetes backend: namespace of Secret "
                                                   "picod-router-identity (the signing key every replica "
                                                   "shares; created if absent). Default: the first watched "
                                                   "namespace. Env: KERNELCUBE_IDENTITY_NAMESPACE, or "
                                                   "AGENTCUBE_NAMESPACE as upstream.")

    warm_adoption = Bool(config=True, help="Kubernetes backend: a new session takes a Ready warm sandbox "
                                           "itself, with one conditional patch (the fast path). False: every "
                                           "session goes through a SandboxClaim that the controller binds, as "
                                           "AgentCube's workload manager does (slower; for comparison, or a "
                                           "gateway that may not patch Sandboxes). Default: true. Env: "
                                           "KERNELCUBE_WARM_ADOPTION.")

    @default("warm_adoption")
    def _warm_adoption_default(self) -> bool:
        return env_bool("KERNELCUBE_WARM_ADOPTION", True)

    @default("namespaces")
    def _namespaces_default(self) -> str:
        return env_str("KERNELCUBE_NAMESPACES") or "default"

    @default("kubeconfig")
    def _kubeconfig_default(self) -> str:
        return env_str("KERNELCUBE_KUBECONFIG")

    @default("kube_context")
    def _kube_context_default(self) -> str:
        return env_str("KERNELCUBE_KUBE_CONTEXT")

    @default("in_cluster")
    def _in_cluster_default(self) -> str:
        return self._env_choice("in_cluster", "KERNELCUBE_IN_CLUSTER", "auto")

    @default("kube_api_url")
    def _kube_api_url_default(self) -> str:
        return env_str("KERNELCUBE_KUBE_API_URL")

    @default("identity_namespace")
    def _identity_namespace_default(self) -> str:
        return env_str("KERNELCUBE_IDENTITY_NAMESPACE") or env_str("AGENTCUBE_NAMESPACE")

    @validate("namespaces")
    def _namespaces_valid(self, proposal):
        names = [n.strip() for n in proposal["value"].split(",") if n.strip()]
        bad = [n for n in names if not DNS_LABEL.fullmatch(n)]
        if not names or bad:
            raise ConfigError(f"{_setting('namespaces')} must be a comma-separated list of namespace names, "
                              f"not {proposal['value']!r}")
        return ",".join(names)

    @validate("identity_namespace")
    def _identity_namespace_valid(self, proposal):
        if proposal["value"] and not DNS_LABEL.fullmatch(proposal["value"]):
            raise ConfigError(f"{_setting('identity_namespace')} {proposal['value']!r} is not a namespace name")
        return proposal["value"]

    @validate("kube_api_url")
    def _kube_api_url_valid(self, proposal):
        if proposal["value"] and not re.match(r"https?://[^/]", proposal["value"]):
            raise ConfigError(f"{_setting('kube_api_url')} must be an http(s) URL, not {proposal['value']!r}")
        return proposal["value"]

    @default("backend")
    def _backend_default(self) -> str:
        return self._env_choice("backend", "KERNELCUBE_BACKEND", "local")

    @default("pool_size")
    def _pool_size_default(self) -> int:
        return env_int("KERNELCUBE_POOL_SIZE", 2)

    @default("sandbox_uid_base")
    def _sandbox_uid_base_default(self) -> int:
        return env_int("KERNELCUBE_SANDBOX_UID_BASE", DEFAULT_UID_BASE)

    @default("redis_url")
    def _redis_url_default(self) -> str:
        return env_str("KERNELCUBE_REDIS_URL")

    @default("isolation")
    def _isolation_default(self) -> str:
        return self._env_choice("isolation", "KERNELCUBE_ISOLATION", "bwrap")

    @default("kernel_zygote")
    def _kernel_zygote_default(self) -> str:
        return self._env_choice("kernel_zygote", "KERNELCUBE_KERNEL_ZYGOTE", "on")

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return env_str("KERNELCUBE_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".local", "state", "kernelcube")

    @default("sandbox_python")
    def _sandbox_python_default(self) -> str:
        return env_str("KERNELCUBE_SANDBOX_PYTHON") or os.path.abspath(os.path.join(".sandbox-venv", "bin", "python"))

    @default("templates")
    def _templates_default(self) -> dict:
        return env_json_object("KERNELCUBE_TEMPLATES")

    @default("max_sandboxes")
    def _max_sandboxes_default(self) -> int:
        return env_int("KERNELCUBE_MAX_SANDBOXES", 32)

    @default("claim_timeout")
    def _claim_timeout_default(self) -> float:
        return env_float("KERNELCUBE_CLAIM_TIMEOUT", 60.0)

    @default("execute_timeout")
    def _execute_timeout_default(self) -> float:
        return env_float("KERNELCUBE_EXECUTE_TIMEOUT", 600.0)

    @default("relay_timeout")
    def _relay_timeout_default(self) -> float:
        return env_float("KERNELCUBE_RELAY_TIMEOUT", 600.0)

    def _env_choice(self, trait: str, name: str, fallback: str) -> str:
        value = env_str(name, fallback)
        choices = self.traits()[trait].values
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
        return value

    @validate("pool_size", "max_sandboxes", "max_parallel_starts", "max_body_bytes", "max_buffered_bytes",
              "max_concurrent_requests")
    def _counts(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        least = 0 if name == "pool_size" else 1
        if value < least:
            raise ConfigError(f"{_setting(name)} must be >= {least}, not {value}")
        return value

    @validate("claim_timeout", "execute_timeout", "relay_timeout", "reap_interval")
    def _seconds(self, proposal):
        if not proposal["value"] > 0:
            raise ConfigError(f"{_setting(proposal['trait'].name)} must be a positive number of seconds, "
                              f"not {proposal['value']}")
        return proposal["value"]

    @validate("sandbox_uid_base")
    def _uid_base(self, proposal):
        # 0 would map the sandbox's uid 0 to host root: the very thing the mapping prevents.
        if not 0 < proposal["value"] <= 2**32 - 2 - RANGE:
            raise ConfigError(f"{_setting('sandbox_uid_base')} must be between 1 and {2**32 - 2 - RANGE} "
                              f"(a range of {RANGE} unused host ids), not {proposal['value']}")
        return proposal["value"]

    @validate("max_session_share")
    def _share(self, proposal):
        if not 0 < proposal["value"] <= 1:
            raise ConfigError(f"max_session_share must be in (0, 1], not {proposal['value']}")
        return proposal["value"]

    def _check_config(self) -> None:
        """Read every setting once, so a bad one fails the launch instead of a later request.
        Defaults (from the environment) are assigned back, since traitlets validates only
        assignments."""
        for name in self.class_own_traits(config=True):
            setattr(self, name, getattr(self, name))

    # -- launch ------------------------------------------------------------------------------

    @classmethod
    def make_serverapp(cls, **kwargs):
        serverapp = super().make_serverapp(**kwargs)
        serverapp.default_services = GATEWAY_SERVICES
        setattr(serverapp, STANDALONE, True)
        # jupyter-server refuses root because notebooks would run user code as root; here user code
        # runs only inside sandboxes without capabilities, never in the gateway process.
        serverapp.allow_root = True
        # A port in use is an error to report, not a reason to serve somewhere nobody looks.
        serverapp.port_retries = 0
        # A gateway that failed to configure must exit, not serve jupyter-server's HTML 404s.
        serverapp.reraise_server_extension_failures = True
        return serverapp

    @property
    def token(self) -> str:
        return self.serverapp.identity_provider.token

    def initialize_settings(self) -> None:
        logging.getLogger("kernelcube").handlers = self.log.handlers
        logging.getLogger("kernelcube").setLevel(self.log.level)
        logging.getLogger("kernelcube").propagate = False
        self._check_config()
        self._guard_unauthenticated_bind()
        self.metrics = Metrics()
        try:
            self.store = make_store(self.redis_url or None)
        except ValueError as exc:
            raise ConfigError(f"{_setting('redis_url')}: {exc}") from None
        self.capacity = Capacity(self.max_sandboxes)
        if self.backend == "kubernetes":
            templates, self.pools = self._init_kubernetes()
        else:
            templates, self.pools = self._init_local()
        self.metrics.watch_pools(self.pools)
        self.sessions = SessionManager(self.store, self.provider, self.pools, templates, self.identity,
                                       self.capacity, self.metrics)
        self.router_limiter = FairLimiter(self.max_concurrent_requests, self.max_session_share)
        self.body_budget = BodyBudget(self.max_buffered_bytes)
        self.metrics.watch_body_budget(self.body_budget)
        self._tasks: list[asyncio.Task] = []
        self.kernel_connections: dict[str, int] = {}  # kernel id -> open channel sockets here
        self._started = self._stopped = False

    def _init_local(self) -> tuple[dict, dict]:
        """Local sandboxes: the key on disk, bubblewrap, pools that the gateway fills."""
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
        except (TemplateError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{_setting('templates')}: {exc}") from None
        try:
            self.identity = Identity.load_or_create(os.path.join(self.state_dir, "identity"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{_setting('state_dir')} {self.state_dir!r} cannot hold the "
                              f"signing key: {exc}") from None
        try:
            self.provider = LocalProvider(self.state_dir, self.identity.public_pem, self.isolation, python,
                                          die_with_gateway=not self.store.persistent,
                                          uid_base=self.sandbox_uid_base, kernel_zygote=self.kernel_zygote == "on")
        except (UsernsError, OSError) as exc:
            raise ConfigError(f"cannot prepare local sandboxes: {exc}") from None
        for note in self.provider.describe_isolation():
            (self.log.warning if note.startswith("WARNING") else self.log.info)(note.removeprefix("WARNING: "))
        pools = {name: WarmPool(t, self.provider, self.capacity, self.metrics, self.max_parallel_starts)
                 for name, t in templates.items()}
        return templates, pools

    def _init_kubernetes(self) -> tuple[dict, dict]:
        """Pods: templates and warm pools are the cluster's (CodeInterpreters and their
        SandboxWarmPools, watched); the signing key is the Secret every replica shares."""
        # Imported here: only this backend needs the kubernetes client.
        from .providers.kubernetes import KubernetesProvider, KubeSettings, load_identity

        if self.templates:
            self.log.warning("%s is ignored with the kubernetes backend: templates are the CodeInterpreters "
                             "and AgentRuntimes of the watched namespaces", _setting("templates"))
        settings = KubeSettings(namespaces=self.namespaces.split(","), kubeconfig=self.kubeconfig,
                                context=self.kube_context, in_cluster=self.in_cluster,
                                api_url=self.kube_api_url, identity_namespace=self.identity_namespace,
                                warm_adoption=self.warm_adoption)
        try:
            # Before serving, so that an unreachable cluster stops the launch with its reason.
            self.identity = _run_apart(load_identity(settings))
        except Exception as exc:
            raise ConfigError(f"cannot use the Kubernetes API ({_setting('kube_api_url')}, "
                              f"{_setting('kubeconfig')}, {_setting('in_cluster')}) to load Secret "
                              f"picod-router-identity: {exc}") from None
        self.provider = KubernetesProvider(settings, self.identity.public_pem)
        return self.provider.templates, self.provider.pools

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
        self.handlers.extend(health.default_handlers + agentcube.default_handlers + execute.default_handlers
                             + kernels.default_handlers + channels.default_handlers + capabilities.default_handlers
                             + openapi.default_handlers)
        if getattr(self.serverapp, STANDALONE, False):
            # Last, so it answers only what nothing above routes; extension rules come before
            # jupyter-server's own, so it also hides whatever the server would still serve.
            self.handlers.extend(fallback.default_handlers)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Start pools and the reaper once. A plain jupyter_server calls this through
        _start_jupyter_server_extension; handlers call it too, for hosts that never do."""
        if self._started:
            return
        self._started = True
        serverapp = self.serverapp
        await self.provider.start()
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


def _run_apart(coroutine):
    """Run a coroutine to completion on a loop of its own, in a thread (the server's loop may
    already exist); for start-up work only."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def main(argv: list[str] | None = None) -> None:
    """The `kernelcube` command. KERNELCUBE_TOKEN is the gateway token (JUPYTER_TOKEN works too)."""
    token = os.environ.get("KERNELCUBE_TOKEN")
    if token is not None:
        os.environ.setdefault("JUPYTER_TOKEN", token)
    KernelCubeApp.launch_instance(argv)
