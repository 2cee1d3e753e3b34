"""Dependency directions DESIGN.md states: the controller never imports the gateway; the shared
wire-format package imports neither server; only `controller.kube` imports the kubernetes
client. Checked on the source (every import statement), not on what happens to be loaded."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_controller_does_not_import_the_gateway():
    for path, names in imports("controller").items():
        assert "kernel_gateway_ext" not in names, path


def test_the_wire_package_imports_neither_server_nor_a_client():
    for path, names in imports("kernelcube_wire").items():
        assert not names & {"kernel_gateway_ext", "controller", "kubernetes", "redis"}, path


def test_only_controller_kube_imports_the_kubernetes_client():
    users = sorted(path for path, names in imports("controller").items() if "kubernetes" in names)
    assert users == ["controller/kube.py"]
