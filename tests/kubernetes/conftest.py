"""Fixtures of the Kubernetes backend tests: a fake cluster whose pods run PicoD for real, a
real redis-server, and `kernelcube --backend kubernetes` gateway processes against them."""

from __future__ import annotations

import pytest

from tests.kubernetes.cluster import Cluster
from tests.support.gateway import Gateway
from tests.support.redis import RedisServer, free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(str(tmp_path_factory.mktemp("cluster"))) as running:
        yield running


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def start_gateway(cluster: Cluster, state_dir: str, redis_url: str = "", port: int | None = None,
                  namespaces: str = "default", extra: tuple[str, ...] = ()) -> Gateway:
    return Gateway(state_dir, port or free_port(), redis_url=redis_url,
                   extra=("--backend", "kubernetes", "--kube-api-url", cluster.url, "--namespaces", namespaces,
                          "--KernelCubeApp.claim_timeout=30", *extra))


@pytest.fixture
def gateways(cluster, tmp_path):
    """Start gateways with `gateways(redis_url)`; every one is stopped afterwards."""
    started: list[Gateway] = []

    def start(redis_url: str = "", port: int | None = None, namespaces: str = "default",
              extra: tuple[str, ...] = ()) -> Gateway:
        started.append(start_gateway(cluster, str(tmp_path / f"state{len(started)}"), redis_url, port, namespaces,
                                     extra))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()
