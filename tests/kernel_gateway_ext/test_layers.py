"""Dependency directions DESIGN.md states, for the gateway: it never imports the controller, and
only `kernel_gateway_ext/kube.py` imports the kubernetes client. Checked on the source (every
import statement)."""

from __future__ import annotations

from tests.controller.test_layers import imports


def test_the_gateway_does_not_import_the_controller():
    for path, names in imports("kernel_gateway_ext").items():
        assert "controller" not in names, path


def test_only_the_gateways_kube_module_imports_the_kubernetes_client():
    users = sorted(path for path, names in imports("kernel_gateway_ext").items() if "kubernetes" in names)
    assert users == ["kernel_gateway_ext/kube.py"]
