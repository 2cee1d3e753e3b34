# pytest-jupyter's server fixtures (jp_fetch, jp_ws_fetch, jp_serverapp) for the gateway tests.
# pytest accepts `pytest_plugins` only in the root conftest, so it lives here.
pytest_plugins = ["pytest_jupyter.jupyter_server"]
