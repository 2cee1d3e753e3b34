"""One real gateway for the client tests (see tests/support/client_gateway.py)."""

from __future__ import annotations

import pytest

from tests.support.client_gateway import TOKEN, start_gateway, stop_gateway


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    server = start_gateway(str(tmp_path_factory.mktemp("state")))
    yield server
    stop_gateway(server)


@pytest.fixture
def connect(gateway):
    """Client keyword arguments for the test gateway."""
    return {"url": gateway.url, "token": TOKEN}
