"""The kernel's preload (`--preload`, `--preload-code`): modules imported and code run before
/health says ready, invisibly (no output, history, execution count or names of its own); a
module that fails to import, or code that raises, is reported in /health and skipped, and the
kernel serves anyway; a restarted kernel is preloaded again."""

from __future__ import annotations


def run(picod, code):
    response = picod.request("POST", "/api/run", json={"code": code})
    assert response.status_code == 200, response.text
    return response.json()


def test_preloaded_modules_and_code_are_there_before_ready(fresh_picod):
    picod = fresh_picod("--preload", "decimal,fractions", "--preload", "colorsys",
                        "--preload-code", "preset = 41\nimport statistics as stats")
    health = picod.request("GET", "/health", auth=False).json()
    assert health["kernel"] == "ready"
    assert health["preload"]["modules"] == {"decimal": "ok", "fractions": "ok", "colorsys": "ok"}
    assert health["preload"]["code"] == "ok" and health["preload"]["seconds"] >= 0
    first = run(picod, "import sys; sorted(m for m in ('decimal', 'fractions', 'colorsys') if m in sys.modules)")
    # Nothing of the preload shows: this is the session's first execution, the imports bound
    # no names, and only the code's own names are in the namespace.
    assert first["execution_count"] == 1 and first["stdout"] == "" and first["stderr"] == ""
    assert first["results"][0]["text/plain"] == "['colorsys', 'decimal', 'fractions']"
    names = run(picod, "[n for n in ('decimal', 'fractions', 'MODULES', 'failed', 'importlib') if n in globals()]")
    assert names["results"][0]["text/plain"] == "[]"
    assert run(picod, "preset + 1, stats.mean([1, 3])")["results"][0]["text/plain"] == "(42, 2)"
    assert run(picod, "len(In)")["results"][0]["text/plain"] == "5"  # In[0] and this session's four


def test_failures_are_reported_and_the_kernel_serves_without_them(fresh_picod):
    picod = fresh_picod("--preload", "json,no_such_module_for_kernelcube,decimal",
                        "--preload-code", "1 / 0")
    health = picod.request("GET", "/health", auth=False)
    assert health.status_code == 200
    report = health.json()["preload"]
    assert report["modules"]["json"] == "ok" and report["modules"]["decimal"] == "ok"
    assert report["modules"]["no_such_module_for_kernelcube"].startswith("ModuleNotFoundError")
    assert report["code"].startswith("ZeroDivisionError")
    assert run(picod, "import sys; 'decimal' in sys.modules")["results"][0]["text/plain"] == "True"


def test_a_restarted_kernel_is_preloaded_again(fresh_picod):
    picod = fresh_picod("--preload", "colorsys", "--preload-code", "preset = 1")
    run(picod, "import sys; del sys.modules['colorsys']; del preset")
    assert picod.request("POST", "/api/kernel/restart").json()["kernel"] == "ready"
    after = run(picod, "import sys; 'colorsys' in sys.modules, preset")
    assert after["results"][0]["text/plain"] == "(True, 1)"


def test_without_preload_health_says_nothing_of_it(picod):
    assert "preload" not in picod.request("GET", "/health", auth=False).json()
