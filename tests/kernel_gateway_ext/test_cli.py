"""The `kernelcube` command as a new user meets it, through real processes: `--help`,
`--help-all` and `--version` work; every bad setting (environment, templates, command line) and
a port in use end the launch with a non-zero status and one line naming the setting, before
anything is served; launched as `kernelcube`, jupyter-server's own pages and APIs (files, tree,
contents, nbconvert, login, ...) are not served and every unknown path is a JSON 404."""

from __future__ import annotations

import importlib.metadata
import socket

import pytest
import requests

from tests.support.gateway import HEADERS, Gateway, run_kernelcube
from tests.support.redis import free_port

pytestmark = pytest.mark.slow


def test_help_and_version():
    for flag in ("--help", "--help-all"):
        result = run_kernelcube(flag)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "--token=<Unicode>" in result.stdout and "--pool-size=<Int>" in result.stdout
    assert "--KernelCubeApp.relay_timeout" in run_kernelcube("--help-all").stdout
    version = run_kernelcube("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == importlib.metadata.version("kernelcube") != "0.0"


BAD_SETTINGS = [
    ({"KERNELCUBE_TEMPLATES": '{"net": {network: true}}'}, (), "KERNELCUBE_TEMPLATES is not valid JSON"),
    ({"KERNELCUBE_TEMPLATES": '["net"]'}, (), "KERNELCUBE_TEMPLATES must be a JSON object"),
    ({"KERNELCUBE_TEMPLATES": '{"net": {"netwrk": true}}'}, (), "templates (KERNELCUBE_TEMPLATES): template 'net' has unknown key"),
    ({"KERNELCUBE_TEMPLATES": '{"net": {"rlimits": 5}}'}, (), "templates (KERNELCUBE_TEMPLATES)"),
    ({"KERNELCUBE_POOL_SIZE": "two"}, (), "KERNELCUBE_POOL_SIZE='two' is not a whole number"),
    ({"KERNELCUBE_POOL_SIZE": "-1"}, (), "pool_size (KERNELCUBE_POOL_SIZE) must be >= 0"),
    ({"KERNELCUBE_MAX_SANDBOXES": "0"}, (), "max_sandboxes (KERNELCUBE_MAX_SANDBOXES) must be >= 1"),
    ({"KERNELCUBE_CLAIM_TIMEOUT": "soon"}, (), "KERNELCUBE_CLAIM_TIMEOUT='soon' is not a number"),
    ({"KERNELCUBE_EXECUTE_TIMEOUT": "0"}, (), "execute_timeout (KERNELCUBE_EXECUTE_TIMEOUT) must be a positive"),
    ({"KERNELCUBE_ISOLATION": "weak"}, (), "KERNELCUBE_ISOLATION='weak' is not one of bwrap, none"),
    ({"KERNELCUBE_REDIS_URL": "http://localhost:6379"}, (), "redis_url (KERNELCUBE_REDIS_URL): unknown session store"),
    ({"KERNELCUBE_BACKEND": "kubernetes", "KERNELCUBE_WARM_ADOPTION": "maybe"}, (),
     "KERNELCUBE_WARM_ADOPTION='maybe' is not a boolean"),
    ({}, ("--pool-size", "two"), "'pool_size' trait"),
]


@pytest.mark.parametrize(("env", "args", "message"), BAD_SETTINGS)
def test_a_bad_setting_stops_the_launch(tmp_path, env, args, message):
    port = free_port()
    # Were the setting accepted, the gateway would start no sandbox (and be stopped by the timeout).
    env = {"KERNELCUBE_ISOLATION": "none", "KERNELCUBE_POOL_SIZE": "0", **env}
    result = run_kernelcube("--ip", "127.0.0.1", "--port", str(port), "--state-dir", str(tmp_path / "state"),
                            *args, env=env, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert "KernelCube gateway at" not in output  # nothing was served
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health/live", timeout=5)


def test_a_port_in_use_is_an_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_kernelcube("--ip", "127.0.0.1", "--port", str(port), "--state-dir", str(tmp_path / "state"),
                                "--isolation", "none", "--pool-size", "0")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"port {port} is not available" in output
    assert "trying another port" not in output and "KernelCube gateway at" not in output


JUPYTER_PATHS = ["/", "/files/secret.txt", "/view/secret.txt", "/tree", "/tree/secret.txt", "/edit/secret.txt",
                 "/notebooks/x.ipynb", "/nbconvert/html/x.ipynb", "/api/contents", "/api/contents/secret.txt",
                 "/api/kernels/x/y", "/api/kernelspecs/a/b", "/api/sessions", "/api/resolvePath?path=secret.txt",
                 "/api/spec.yaml", "/api/status", "/api/me", "/api/config/x", "/api/nbconvert", "/login",
                 "/logout", "/lab", "/static/favicon.ico", "/favicon.ico", "/robots.txt", "/v1/sessions/",
                 "/no/such/path"]


def test_only_the_gateway_is_served(tmp_path):
    """jupyter-server's own pages and APIs are not there (the kernel API is the gateway's own,
    served from its sandboxes; see test_kernels_api.py)."""
    served = tmp_path / "cwd"
    served.mkdir()
    (served / "secret.txt").write_text("the gateway's own disk")
    gateway = Gateway(str(tmp_path / "state"), free_port(), pool_size=0, cwd=str(served),
                      extra=("--isolation", "none"), ready_path="/health/live")
    try:
        for path in JUPYTER_PATHS:
            for headers in (HEADERS, {}):
                response = requests.get(gateway.url + path, headers=headers, timeout=30, allow_redirects=False)
                assert response.status_code == 404, (path, response.status_code, response.text[:200])
                assert response.headers["Content-Type"].startswith("application/json"), path
                assert response.json()["code"] == "NOT_FOUND" and "/v1/openapi.json" in response.json()["error"]
        for method in ("PUT", "POST", "DELETE", "PATCH"):
            response = requests.request(method, gateway.url + "/api/contents/new.txt", headers=HEADERS,
                                        json={"type": "file", "format": "text", "content": "x"}, timeout=30)
            assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
        assert not (served / "new.txt").exists()
        # What the gateway does serve still works.
        assert requests.get(gateway.url + "/v1/sessions", headers=HEADERS, timeout=30).status_code == 200
        assert requests.get(gateway.url + "/v1/openapi.json", timeout=30).json()["openapi"].startswith("3.1")
    finally:
        assert gateway.stop() == 0, gateway.log
