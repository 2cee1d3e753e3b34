"""The chart tests' tools: a pinned helm (installed by `make`, or here on first use) and a
renderer that returns the manifests `helm template` produces for some values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kernelcube"
HELM = ROOT / ".cache" / "helm" / "helm"
RELEASE, NAMESPACE = "kc", "sandboxes"


class HelmFailed(Exception):
    """helm exited non-zero; the message is its stderr."""


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Callable[..., str]:
    """Run helm with a private HOME (no user config, no repositories, no network)."""
    binary = Path(os.environ.get("KERNELCUBE_HELM") or HELM)
    if not binary.exists():
        subprocess.run([sys.executable, str(ROOT / ".ci" / "get_helm.py"), str(binary)],
                       check=True, capture_output=True)
    home = tmp_path_factory.mktemp("helm-home")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CACHE_HOME": str(home),
           "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home)}

    def run(*args: str) -> str:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise HelmFailed(done.stderr.strip())
        return done.stdout

    return run


@pytest.fixture(scope="session")
def render(helm, tmp_path_factory) -> Callable[..., list[dict]]:
    """render(values) -> the rendered documents (dicts), through `helm template`."""
    tmp = tmp_path_factory.mktemp("values")
    count = iter(range(1_000_000))

    def run(values: dict | None = None, *, namespace: str = NAMESPACE) -> list[dict]:
        path = tmp / f"values-{next(count)}.yaml"
        path.write_text(yaml.safe_dump(values or {}))
        out = helm("template", RELEASE, str(CHART), "--namespace", namespace, "--values", str(path))
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return run


def find(docs: list[dict], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
