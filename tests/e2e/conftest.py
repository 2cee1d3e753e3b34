"""Fixtures of the end-to-end tests on a real Kubernetes control plane (`make test-k8s`).

They run only when `KERNELCUBE_E2E=1` (the make target sets it): building the control plane
takes about 13 minutes on 2 cores when the cache is cold, and `make test` must not pay that.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.build_control_plane import BuildError, ensure_built
from tests.e2e.cluster import RealCluster
from tests.support.redis import RedisServer


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KERNELCUBE_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="real-cluster test: run it with `make test-k8s`")
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def control_plane_bin():
    started = time.monotonic()
    try:
        path = ensure_built()
    except BuildError as exc:
        pytest.fail(str(exc))
    print(f"\ncontrol plane binaries ready in {time.monotonic() - started:.1f}s")
    return path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory, control_plane_bin, redis_server):
    with RealCluster(tmp_path_factory.mktemp("k8s"), control_plane_bin, redis_server.url) as cluster:
        print(f"\ncluster timings: {cluster.timings}")
        yield cluster
