"""Fixtures of the controller tests: a fake Kubernetes API server over HTTP (no real
kube-apiserver can run here), a simulated kubelet, a client, and running controllers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio

from controller.kube import KubeClient, load_configuration
from controller.manager import Controller
from controller.settings import Settings
from controller.testing.apiserver import FakeApiServer, load_crds
from controller.testing.kubelet import Kubelet
from tests.controller.helpers import CRD_DIR


@pytest.fixture(scope="session")
def crds() -> list[dict]:
    return load_crds(CRD_DIR)


@dataclass
class Cluster:
    api: FakeApiServer
    kubelet: Kubelet
    kube: KubeClient

    async def client(self) -> KubeClient:
        return KubeClient(await load_configuration(host=self.api.url))


def fast_settings(**overrides) -> Settings:
    settings = Settings(leader_election=False, metrics_port=0, readiness_grace=300.0,
                        warm_wait=0.5, resync=30.0, identity="test")
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest_asyncio.fixture
async def cluster(crds):
    async with FakeApiServer(crds) as api, Kubelet(api.store) as kubelet:
        kube = KubeClient(await load_configuration(host=api.url))
        try:
            yield Cluster(api, kubelet, kube)
        finally:
            await kube.close()


@pytest_asyncio.fixture
async def make_controller(cluster):
    """Start controllers with settings of the test's choosing; all are stopped afterwards."""
    started: list[Controller] = []

    async def make(wait: bool = True, **overrides) -> Controller:
        ctl = Controller(await cluster.client(), fast_settings(**overrides))
        started.append(ctl)
        await ctl.__aenter__()
        if wait:
            await ctl.leading.wait()
        return ctl

    try:
        yield make
    finally:
        for ctl in started:
            await ctl.close()
            await ctl.kube.close()


@pytest_asyncio.fixture
async def controller(make_controller):
    return await make_controller()
