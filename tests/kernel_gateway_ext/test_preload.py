"""Warm kernels preloaded per template: a claimed session of the default template finds numpy,
pandas and matplotlib (inline) imported and its first plot comes back as PNG; a template with
`preload: false` imports nothing; a preload that fails is reported (/health/ready, metrics) and
the pool serves anyway; the shared caches (matplotlib's font list, IPython's profile) are bound
read-only into every sandbox, which builds neither."""

from __future__ import annotations

import json

import pytest

from .conftest import body, wait_ready

PRELOADED = "import sys; [m for m in ('numpy', 'pandas', 'matplotlib.pyplot') if m in sys.modules]"


async def run(jp_fetch, code: str, session_id: str | None = None, template: str | None = None,
              language: str = "python") -> dict:
    payload = {"code": code, "timeout": 60, "language": language}
    if session_id:
        payload["session_id"] = session_id
    if template:
        payload["template"] = template
    response = await jp_fetch("v1", "execute", method="POST", body=json.dumps(payload), raise_error=False,
                              request_timeout=120)
    assert response.code == 200, response.body
    return body(response)


@pytest.fixture
def bare_template(gateway_config):
    gateway_config["templates"] = {"bare": {"pool_size": 1, "preload": False}}


async def test_a_claimed_session_finds_the_preload_and_plots_at_once(bare_template, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    first = await run(jp_fetch, PRELOADED)
    assert first["execution_count"] == 1 and first["stdout"] == "" and first["stderr"] == ""
    assert first["results"][0]["text/plain"] == "['numpy', 'pandas', 'matplotlib.pyplot']"
    session = first["session_id"]
    plot = await run(jp_fetch, "import pandas, matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()", session)
    assert plot["status"] == "ok" and plot["stderr"] == "", plot
    assert [r for r in plot["results"] if "image/png" in r], plot
    names = await run(jp_fetch, "[n for n in ('np', 'pd', 'plt', 'numpy', 'figure', 'print_figure') if n in globals()]",
                      session)
    assert names["results"][0]["text/plain"] == "['plt']"  # only what the session itself imported

    bare = await run(jp_fetch, PRELOADED, template="bare")
    assert bare["results"][0]["text/plain"] == "[]"


async def test_shared_caches_are_read_only_and_used(jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    check = await run(jp_fetch, """
import glob, os
fontlist, = glob.glob('/tmp/.matplotlib/fontlist-*.json')
outcome = []
for path in (fontlist, '/tmp/.ipython/profile_default/startup/README', '/tmp/.ipython/profile_default/x'):
    try:
        open(path, 'a').close()
        outcome.append('written')
    except OSError:
        outcome.append('refused')
os.mkdir('/tmp/.matplotlib/tex.cache')  # the directories around the caches stay the sandbox's own
import matplotlib, IPython
outcome, matplotlib.get_cachedir(), IPython.paths.get_ipython_dir(), os.path.getmtime(fontlist) < os.path.getmtime('/tmp')
""")
    assert check["status"] == "ok", check
    outcome, cachedir, ipythondir, older = eval(check["results"][0]["text/plain"])  # noqa: S307 -- our own literal
    assert outcome == ["refused", "refused", "refused"]
    assert (cachedir, ipythondir, older) == ("/tmp/.matplotlib", "/tmp/.ipython", True)
    shell = await run(jp_fetch, "rm -f /tmp/.matplotlib/fontlist-*.json /tmp/.ipython/profile_default/startup/README",
                      check["session_id"], language="bash")
    assert "Device or resource busy" in shell["stderr"] or "Read-only" in shell["stderr"], shell
    still = await run(jp_fetch, "import glob; len(glob.glob('/tmp/.matplotlib/fontlist-*.json')), "
                                "len(glob.glob('/tmp/.ipython/profile_default/startup/*'))", check["session_id"])
    assert still["results"][0]["text/plain"] == "(1, 1)"


@pytest.fixture
def broken_preload(gateway_config):
    gateway_config["templates"] = {"broken": {"pool_size": 1, "preload": {
        "modules": ["json", "no_such_module_for_kernelcube"], "code": "raise RuntimeError('boom')"}}}


async def test_a_failing_preload_is_reported_and_the_pool_serves(broken_preload, jp_fetch, gateway):
    ready = await wait_ready(jp_fetch, timeout=120)
    failed = ready["pools"]["broken"]["preload_failed"]
    assert failed["no_such_module_for_kernelcube"].startswith("ModuleNotFoundError")
    assert failed["(code)"] == "RuntimeError: boom" and "json" not in failed
    assert "preload_failed" not in ready["pools"]["default"]
    result = await run(jp_fetch, "import sys; 'json' in sys.modules, 6 * 7", template="broken")
    assert result["results"][0]["text/plain"] == "(True, 42)"
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_preload_failures_total{module="no_such_module_for_kernelcube",template="broken"}' in metrics
