"""Test support: a fake Kubernetes API server over HTTP and a simulated kubelet.

Needs the `dev` extras (jsonschema). Nothing here is imported by the controller itself.
"""
