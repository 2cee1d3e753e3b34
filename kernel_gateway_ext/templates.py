"""Sandbox templates: named classes of sandbox, from configuration.

Locally a template is image-free: isolation, network, rlimits, environment, the Python that
runs PicoD and the kernel, what its warm kernels preload, pool size and session lifetimes. An agent-runtime template runs a
user command (an HTTP agent) with `PORT` set instead of a kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

KINDS = ("code-interpreter", "agent-runtime")
RLIMITS = ("nofile", "nproc", "as", "cpu", "fsize", "core", "memlock")
DEFAULT_RLIMITS = {"nofile": 4096, "fsize": 4 * 1024**3, "core": 0}


GiB, MiB = 1024**3, 1024**2
SIZE_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}


class TemplateError(ValueError):
    """A template in the configuration that cannot be used; the message says why."""


def parse_size(value) -> int:
    """Bytes from an integer or a string such as "512M", "2G", "1GiB" (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive size")
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a size such as 512M or 2G")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use. `memory` bounds everything it holds in RAM, the files in its
    in-memory workspace, /tmp and /dev/shm included; each of those has its own size cap too."""

    memory: int = 2 * GiB
    processes: int = 256  # processes and threads
    cpus: float = 1.0  # CPU time, in cores; 0 = no cap
    disk: int = 1 * GiB  # the workspace
    tmp: int = 256 * MiB
    shm: int = 64 * MiB

    @classmethod
    def from_config(cls, spec) -> Limits:
        if not isinstance(spec, dict):
            raise ValueError(f"limits must be a mapping, not {type(spec).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; known: {sorted(known)}")
        values = {}
        for key, value in spec.items():
            if key in ("memory", "disk", "tmp", "shm"):
                values[key] = parse_size(value)
            elif key == "processes":
                if isinstance(value, bool) or not isinstance(value, int) or value < 8:
                    raise ValueError("limits.processes must be an integer >= 8")
                values[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError("limits.cpus must be a number of cores >= 0 (0: no cap)")
                values[key] = float(value)
        return cls(**values)


# What a warm kernel has done before its sandbox counts as ready, unless the template says
# otherwise: the usual data libraries imported, plots shown inline, and one figure drawn off
# screen (fonts, the Agg renderer and the PNG writer loaded) so that a session's first plot is
# quick. The drawing runs in a namespace of its own and leaves no name behind. A kernel forked
# from a zygote finds the Agg renderer loaded already, before `%matplotlib inline` loads it (the
# zygote drew that figure once, for all its kernels): drawing again would only cost each kernel
# memory and time.
DEFAULT_PRELOAD_MODULES = ("numpy", "pandas", "matplotlib.pyplot")
DEFAULT_PRELOAD_CODE = """\
if "matplotlib.backends.backend_agg" not in __import__("sys").modules:
    exec("from matplotlib.figure import Figure\\nfrom IPython.core.pylabtools import print_figure\\n"
         "figure = Figure()\\nfigure.subplots().plot([1, 2])\\nprint_figure(figure, 'png')", {})
%matplotlib inline
"""


@dataclass(frozen=True)
class Preload:
    """Run in a sandbox's kernel before the sandbox is ready: `modules` imported (into
    sys.modules, not the user's namespace; one that fails is reported and skipped), then `code`
    (IPython syntax, in the user's namespace, silently)."""

    modules: tuple = DEFAULT_PRELOAD_MODULES
    code: str = DEFAULT_PRELOAD_CODE

    @classmethod
    def from_config(cls, spec) -> Preload:
        """From `false`/`null` (nothing), `true` (the default), a list of modules, or a mapping
        {modules, code}; keys left out of a mapping are empty."""
        if spec is None or spec is False:
            return cls((), "")
        if spec is True:
            return cls()
        if isinstance(spec, (list, tuple)):
            spec = {"modules": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"preload must be true, false, a list of modules or a mapping, not {type(spec).__name__}")
        unknown = set(spec) - {"modules", "code"}
        if unknown:
            raise ValueError(f"preload has unknown key(s) {sorted(unknown)}; known: ['code', 'modules']")
        modules = spec.get("modules") or []
        if not isinstance(modules, (list, tuple)) or not all(
                isinstance(m, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", m) for m in modules):
            raise ValueError("preload.modules must be a list of module names such as 'numpy' or 'matplotlib.pyplot'")
        code = spec.get("code") or ""
        if not isinstance(code, str):
            raise ValueError("preload.code must be a string of Python (IPython) code")
        return cls(tuple(modules), code)

    def __bool__(self) -> bool:
        return bool(self.modules or self.code)


@dataclass(frozen=True)
class Template:
    name: str
    kind: str = "code-interpreter"
    pool_size: int = 2
    session_timeout: float = 15 * 60  # idle seconds before the reaper ends a session
    max_session_duration: float = 8 * 3600
    network: bool = False
    isolation: str = ""  # "" = the gateway's --isolation
    python: str = ""  # "" = the gateway's sandbox Python
    env: dict = field(default_factory=dict)
    rlimits: dict = field(default_factory=lambda: dict(DEFAULT_RLIMITS))
    limits: Limits = field(default_factory=Limits)
    preload: Preload = field(default_factory=Preload)  # code-interpreter: run in the warm kernel
    command: list = field(default_factory=list)  # agent-runtime: argv, run with PORT set
    port: int = 8080  # agent-runtime: the port its command listens on (inside the sandbox)
    namespace: str = ""  # the namespace whose sessions may use it ("" = any; Kubernetes: its CR's)

    @classmethod
    def from_config(cls, name: str, spec: dict) -> Template:
        if not isinstance(spec, dict):
            raise TemplateError(f"template {name!r} must be a mapping, not {type(spec).__name__}")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(spec) - known
        if unknown:
            raise TemplateError(f"template {name!r} has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        values = dict(spec)
        if "rlimits" in values:
            values["rlimits"] = {**DEFAULT_RLIMITS, **values["rlimits"]}
        if "limits" in values:
            try:
                values["limits"] = Limits.from_config(values["limits"])
            except ValueError as exc:
                raise TemplateError(f"template {name!r}: {exc}") from None
        if "preload" in values:
            try:
                values["preload"] = Preload.from_config(values["preload"])
            except ValueError as exc:
                raise TemplateError(f"template {name!r}: {exc}") from None
        template = cls(name=name, **values)
        template.validate()
        return template

    def validate(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}")
        if not isinstance(self.pool_size, int) or self.pool_size < 0:
            problems.append("pool_size must be an integer >= 0")
        for key in ("session_timeout", "max_session_duration"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) <= 0:
                problems.append(f"{key} must be a positive number of seconds")
        if self.isolation not in ("", "bwrap", "none"):
            problems.append("isolation must be 'bwrap', 'none' or empty (the gateway's setting)")
        bad_limits = set(self.rlimits) - set(RLIMITS)
        if bad_limits:
            problems.append(f"unknown rlimits {sorted(bad_limits)}; known: {list(RLIMITS)}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            problems.append("env must map strings to strings")
        if self.kind == "agent-runtime" and not self.command:
            problems.append("an agent-runtime template needs a command")
        if problems:
            raise TemplateError(f"template {self.name!r}: " + "; ".join(problems))


def load_templates(config: dict, default_pool_size: int) -> dict[str, Template]:
    """Templates from configuration; `default` always exists (configurable like any other)."""
    templates = {name: Template.from_config(name, spec) for name, spec in config.items()}
    if "default" not in templates:
        templates["default"] = Template(name="default", pool_size=default_pool_size)
    return templates
