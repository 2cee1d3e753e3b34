"""The `kernelcube-controller` entry point: its --help, a real process reconciling against the
fake API server over HTTP and exiting cleanly on SIGTERM, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import aiohttp
import pytest

from controller import resources as R
from controller.__main__ import build_parser, settings_from
from controller.http import MetricsServer
from tests.controller import helpers as h


def test_help_explains_access_namespaces_election_metrics_and_logging():
    env = dict(os.environ, COLUMNS="200")  # one option per line, however wide the terminal
    out = subprocess.run([sys.executable, "-m", "controller", "--help"], capture_output=True,
                         text=True, timeout=60, check=True, env=env).stdout
    for words in ("--kubeconfig", "service account", "--namespace", "all namespaces",
                  "--lease-name", "--lease-namespace", "--metrics-port", "--log-level",
                  "--redis-url", "--gc-interval", "--gc-batch", "--gc-orphan-grace",
                  "--identity-namespace", "picod-router-identity", "--no-agentcube"):
        assert words in out, words


def test_arguments_become_settings():
    args = build_parser().parse_args([
        "-n", "a", "-n", "b", "--lease-name", "l", "--lease-namespace", "ln",
        "--gateway-label", "app=gw", "--metrics-port", "0", "--no-leader-election",
        "--warm-wait", "1.5", "--allowed-label-domain", "example.org"])
    settings = settings_from(args)
    assert settings.namespaces == ["a", "b"]
    assert (settings.lease_name, settings.lease_namespace) == ("l", "ln")
    assert settings.gateway_labels == {"app": "gw"} and settings.metrics_port == 0
    assert settings.leader_election is False and settings.warm_wait == 1.5
    assert settings.allowed_label_domains == ("example.org",)
    assert settings.identity  # defaults to the pod or host name


def test_agentcube_and_gc_arguments_become_settings(monkeypatch):
    monkeypatch.delenv("KERNELCUBE_REDIS_URL", raising=False)
    monkeypatch.setenv("AGENTCUBE_NAMESPACE", "agentcube")
    settings = settings_from(build_parser().parse_args([]))
    assert settings.redis_url == "" and settings.identity_namespace == "agentcube"
    assert (settings.gc_interval, settings.gc_batch, settings.agentcube) == (15.0, 100, True)
    settings = settings_from(build_parser().parse_args([
        "--redis-url", "redis://r:6379/0", "--gc-interval", "5", "--gc-batch", "50",
        "--gc-pass-timeout", "30", "--gc-orphan-grace", "60", "--gc-sweep-batch", "0",
        "--identity-namespace", "ids", "--no-agentcube", "--pool-fill-warning", "30"]))
    assert settings.redis_url == "redis://r:6379/0" and settings.gc_interval == 5.0
    assert (settings.gc_batch, settings.gc_pass_timeout, settings.gc_orphan_grace,
            settings.gc_sweep_batch) == (50, 30.0, 60.0, 0)
    assert settings.identity_namespace == "ids" and settings.agentcube is False
    assert settings.pool_fill_warning == 30.0
    monkeypatch.setenv("KERNELCUBE_REDIS_URL", "redis://env:6379/1")
    assert settings_from(build_parser().parse_args([])).redis_url == "redis://env:6379/1"


@pytest.mark.asyncio
async def test_the_console_script_reconciles_and_stops_on_sigterm(cluster):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", "--server", cluster.api.url, "-n", h.NS,
        "--lease-namespace", h.NS, "--metrics-port", "0", "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
        await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=2))
        await h.wait_for(lambda: sum(h.ready(s) for s in cluster.api.objects("sandboxes"))
                         == 2, 30, "the pool filled by the process")
        assert cluster.api.get("leases", h.NS, "kernelcube-controller") is not None
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        lease = cluster.api.get("leases", h.NS, "kernelcube-controller")
        assert lease["spec"]["holderIdentity"] == ""  # released on the way out
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()


@pytest.mark.asyncio
async def test_metrics_endpoint(cluster, controller):
    server = MetricsServer(controller)
    await server.start("127.0.0.1", 0)
    try:
        await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
        await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=1))
        await h.wait_for(lambda: any(h.ready(s) for s in cluster.api.objects("sandboxes")), 5)
        await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))
        await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "c")), 5)
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{base}/readyz") as response:
                assert (await response.json())["leading"] is True
        assert 'agent_sandbox_claim_controller_startup_latency_ms_count{launch_type="warm"} 1.0' \
            in text
        assert 'kernelcube_warmpool_replicas{namespace="default",pool="python"}' in text
        assert "kernelcube_reconcile_errors_total" in text
        assert "kernelcube_controller_leader 1.0" in text
    finally:
        await server.stop()
