"""Sandbox templates: named classes of sandbox, from configuration.

Locally a template is image-free: isolation, network, rlimits, environment, the Python that
runs PicoD and the kernel, pool size and session lifetimes. An agent-runtime template runs a
user command (an HTTP agent) with `PORT` set instead of a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

KINDS = ("code-interpreter", "agent-runtime")
RLIMITS = ("nofile", "nproc", "as", "cpu", "fsize", "core", "memlock")
DEFAULT_RLIMITS = {"nofile": 4096, "fsize": 4 * 1024**3, "core": 0}


class TemplateError(ValueError):
    """A template in the configuration that cannot be used; the message says why."""


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
    command: list = field(default_factory=list)  # agent-runtime: argv, run with PORT set
    port: int = 8080  # agent-runtime: the port its command listens on (inside the sandbox)

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
