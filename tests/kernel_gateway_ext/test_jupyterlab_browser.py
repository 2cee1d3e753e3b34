"""JupyterLab in headless Chromium on a KernelCube kernel, as a user sees it: a real
`jupyter lab --gateway-url` in front of a real gateway, a notebook opened in the browser gets a
KernelCube kernel, running its cell shows the sandbox's output in the page, and the gateway has
exactly that kernel. The screenshot is kept as `jupyterlab.png` in the test's tmp dir (path printed).

Lab always gives a kernel two channels connections to the gateway: its first WebSocket asks for
the v1 subprotocol, which jupyter_server in gateway mode does not grant, so Chromium drops it and
Lab reconnects; jupyter_server cannot cancel its half-made connection to the gateway, which stays
open and unread for as long as Lab runs. Output must reach the page all the same.

Needs Debian's `chromium` and `chromium-driver` (`make install` adds them when root); skipped
without them only when not root. Selenium drives the system chromedriver, never a downloaded one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from kernel_gateway_ext.providers.local import sandboxes_root
from tests.kernel_gateway_ext.conftest import describe, wait_gone
from tests.support.gateway import HEADERS, TOKEN, Gateway
from tests.support.processes import ServerProcess
from tests.support.redis import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LAB_TOKEN = "lab-token-0123456789"
CODE = 'import os; print("sandbox-uid", os.getuid(), 6 * 7)'
EXPECTED = "sandbox-uid 1000 42"  # uid 1000: the sandbox's user, not this (root) test process
# Each wait in the page; generous, as two busy cores can slow Lab's first load a lot.
PAGE_WAIT = 120.0
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,800")
PAGE_CHANGING = (NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException,
                 ElementNotInteractableException)
# No toast asking about Jupyter news, and no request to the news and update sites.
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                {"fetchNews": "false", "checkForUpdates": False}}


class JupyterLab(ServerProcess):
    """`jupyter lab` in gateway mode, with its config, data, settings and workspaces under `home`."""

    def __init__(self, gateway_url: str, gateway_token: str, root: Path, home: Path):
        for name, settings in LAB_SETTINGS.items():
            path = home / "config" / "lab" / "user-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        argv = [os.path.join(os.path.dirname(sys.executable), "jupyter-lab"), "--no-browser", "--allow-root",
                "--ip", "127.0.0.1", "--port", str(free_port()), f"--IdentityProvider.token={LAB_TOKEN}",
                f"--gateway-url={gateway_url}", f"--GatewayClient.auth_token={gateway_token}",
                f"--ServerApp.root_dir={root}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JUPYTERLAB_", "KERNEL_"))}
        super().__init__(argv, {**env, "JUPYTER_CONFIG_DIR": str(home / "config"),
                                "JUPYTER_DATA_DIR": str(home / "data"),
                                "JUPYTER_RUNTIME_DIR": str(home / "runtime")},
                         ready_path="/api", url_pattern=r"http://(127\.0\.0\.1):(\d+)/")

    def api(self, method: str, path: str) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"token {LAB_TOKEN}"},
                                timeout=60)


def browser_binaries() -> tuple[str, str]:
    """Chromium and its chromedriver; a missing one skips the test only when we cannot install it."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and chromedriver:
        return chromium, chromedriver
    missing = " ".join(p for p, found in (("chromium", chromium), ("chromium-driver", chromedriver)) if not found)
    message = f"headless browser missing: apt-get install {missing} (`make install` does it as root)"
    if os.geteuid() != 0:
        pytest.skip(message)
    pytest.fail(message)


class Browser:
    """Headless Chromium through the system chromedriver, in a process group of its own so that
    nothing of it survives `quit`, even when the session never started."""

    def __init__(self, chromium: str, chromedriver: str, profile: Path, log: Path):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # An explicit driver path: Selenium Manager (which would download one) is never run.
        self.service = Service(executable_path=chromedriver, log_output=str(log),
                               popen_kw={"start_new_session": True})
        try:
            self.driver = webdriver.Chrome(options=options, service=self.service)
        except BaseException:
            self._kill()
            raise

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._kill()

    def _kill(self) -> None:
        process = getattr(self.service, "process", None)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def notebook(code: str) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "default", "display_name": "Python 3 (KernelCube: default)",
                                        "language": "python"},
                         "language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "id": uuid.uuid4().hex[:8], "metadata": {}, "execution_count": None,
                       "source": code, "outputs": []}]}


def wait_for(driver, condition, what: str, *servers: ServerProcess):
    """The condition's first truthy value (a page still changing under it is retried); on
    timeout, an assertion naming what was awaited, with the servers' logs."""
    wait = WebDriverWait(driver, PAGE_WAIT, poll_frequency=0.2, ignored_exceptions=PAGE_CHANGING)
    try:
        return wait.until(lambda d: condition(d))
    except TimeoutException:
        logs = "\n".join(f"--- {' '.join(s.argv[:1])}:\n{s.log[-4000:]}" for s in servers)
        raise AssertionError(f"not seen within {PAGE_WAIT}s: {what}; the page shows {page_state(driver)}\n"
                             f"{logs}") from None


def page_state(driver) -> dict:
    """What the notebook's toolbar and output area show, for failure messages."""
    def texts(selector: str, attribute: str | None = None) -> list:
        try:
            found = driver.find_elements(By.CSS_SELECTOR, f".jp-NotebookPanel {selector}")
            return [e.get_attribute(attribute) if attribute else e.text for e in found]
        except WebDriverException as exc:
            return [f"({type(exc).__name__})"]
    return {"kernel": texts(".jp-Toolbar-kernelName"),
            "kernel status": texts(".jp-Notebook-ExecutionIndicator", "data-status"),
            "outputs": texts(".jp-OutputArea-output")}


def kernel_idle(driver) -> bool:
    name = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Toolbar-kernelName")
    idle = driver.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]')
    return bool(name and idle and "KernelCube" in name[0].text)


def edit_cell(driver) -> list:
    """Click into the cell's editor until the notebook is in edit mode on it."""
    driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .cm-content").click()
    return driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook.jp-mod-editMode .jp-Cell.jp-mod-active .cm-content")


def output_text(driver) -> str:
    outputs = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .jp-OutputArea-output")
    return "\n".join(o.text for o in outputs)


def save_screenshot(driver, path: Path) -> None:
    """The page as it is now, also after a failure (never hiding that failure)."""
    try:
        driver.save_screenshot(str(path))
        print(f"JupyterLab screenshot: {path}")
    except WebDriverException as exc:
        print(f"no JupyterLab screenshot: {exc}")


def test_jupyterlab_in_a_browser_runs_a_notebook_cell_in_a_kernelcube_sandbox(tmp_path):
    chromium, chromedriver = browser_binaries()
    root = tmp_path / "lab"
    root.mkdir()
    (root / "sandbox.ipynb").write_text(json.dumps(notebook(CODE)))
    screenshot = tmp_path / "jupyterlab.png"
    state = str(tmp_path / "state")
    gateway = Gateway(state, free_port())
    lab = browser = None
    try:
        lab = JupyterLab(gateway.url, TOKEN, root, tmp_path / "jupyter")
        browser = Browser(chromium, chromedriver, tmp_path / "chromium", tmp_path / "chromedriver.log")
        driver = browser.driver
        try:
            driver.get(f"{lab.url}/lab/tree/sandbox.ipynb?token={LAB_TOKEN}")
            wait_for(driver, kernel_idle, "the notebook's KernelCube kernel, idle", lab, gateway)
            editor = wait_for(driver, edit_cell, "the cell's editor focused", lab, gateway)[0]
            editor.send_keys(Keys.SHIFT, Keys.ENTER)
            wait_for(driver, lambda d: EXPECTED in output_text(d), f"the cell's output {EXPECTED!r}", lab, gateway)
            assert output_text(driver).strip() == EXPECTED
        finally:
            save_screenshot(driver, screenshot)
        # The gateway has exactly one kernel: the one Lab's notebook session uses.
        sessions = lab.api("GET", "/api/sessions").json()
        assert [s["path"] for s in sessions] == ["sandbox.ipynb"], sessions
        kernels = requests.get(f"{gateway.url}/api/kernels", headers=HEADERS, timeout=30).json()
        assert [k["id"] for k in kernels] == [sessions[0]["kernel"]["id"]], kernels
    finally:
        if browser is not None:
            browser.quit()
        if lab is not None:
            lab.stop()
        assert gateway.stop() == 0, gateway.log
    assert screenshot.stat().st_size > 0
    # Lab, the gateway, chromium and its driver name the tmp dir; sandboxes their own root.
    left = wait_gone(str(tmp_path)) + wait_gone(sandboxes_root(state))
    assert not left, f"processes outlived the test: {describe(left)}"
