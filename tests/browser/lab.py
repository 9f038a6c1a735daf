"""A real JupyterLab 4 server for browser tests, and helpers to drive a notebook in it
through Playwright (see /work/shared/testing.md, level 3).

The server runs from this interpreter (``sys.executable -m jupyter lab``), on 127.0.0.1 and
a free port, with a random token and throw-away root and workspace directories; it is
stopped by its own PID. Kernels it starts inherit its environment, which is how
``TIMMY_PROVIDERS`` reaches ``%load_ext timmy_magic``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Locator, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAILED_WIDGET_TEXT = ("HBox(children=", "VBox(children=", "Loading widget",
                      "<timmy-magic panel", "Error displaying widget")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterLab:
    def __init__(self, root: Path, env: dict[str, str], log_path: Path,
                 inherit: Callable[[str], bool] = lambda name: True) -> None:
        """``env`` over this process's environment, less the names ``inherit`` refuses."""
        self.root, self.port, self.token = root, free_port(), secrets.token_hex(16)
        self.workspaces = root.parent / (root.name + "-workspaces")
        self.workspaces.mkdir(exist_ok=True)
        settings = root.parent / (root.name + "-settings")
        no_news = settings / "@jupyterlab" / "apputils-extension"
        no_news.mkdir(parents=True, exist_ok=True)
        (no_news / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # every cell stays in the DOM, so the n-th .jp-Cell is the n-th cell
        tracker = settings / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True, exist_ok=True)
        (tracker / "tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none"}))
        env = {"JUPYTERLAB_SETTINGS_DIR": str(settings), **env}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
             "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             f"--LabApp.workspaces_dir={self.workspaces}", "--LabApp.news_url=None",
             "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env={**{k: v for k, v in os.environ.items() if inherit(k)}, **env},
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait_ready(60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/api/status?token={self.token}", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {timeout:g}s")

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": src,
                     "outputs": [], "execution_count": None} for i, src in enumerate(cells)]}
    path.write_text(json.dumps(nb))


# ------------------------------------------------------------------ driving a notebook

KERNEL_READY = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""

RUN_CELL = """(i) => {
  const app = window.jupyterapp, panel = app.shell.currentWidget;
  panel.content.activeCellIndex = i;
  panel.content.deselectAll();
  app.commands.execute('notebook:run-cell');  // not awaited: it resolves when the cell ends
}"""

KERNEL_IDLE = """() => {
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  return k.status === 'idle';
}"""


def open_notebook(page: Page, lab: JupyterLab, name: str, timeout_s: float = 60,
                  reset: bool = False) -> None:
    """``reset``: a fresh workspace (without it, JupyterLab reopens the notebooks of the
    last page, each with its kernel)."""
    page.goto(lab.notebook_url(name) + ("&reset" if reset else ""))
    page.wait_for_function(KERNEL_READY, timeout=timeout_s * 1000, polling=200)


def cell(page: Page, i: int) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(i)


def run_cell(page: Page, i: int, timeout_s: float = 60) -> Locator:
    """Run code cell ``i`` and wait until it has an execution count and the kernel is idle."""
    page.evaluate(RUN_CELL, i)
    prompt = cell(page, i).locator(".jp-InputPrompt")
    page.wait_for_function(
        """([i]) => {
          const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
          const p = c && c.querySelector('.jp-InputPrompt');
          return !!p && /\\[\\d+\\]/.test(p.textContent);
        }""", arg=[i], timeout=timeout_s * 1000, polling=100)
    page.wait_for_function(KERNEL_IDLE, timeout=timeout_s * 1000, polling=100)
    assert prompt.count() == 1
    return cell(page, i).locator(".jp-OutputArea")


RUN_ALL = """async () => {
  const app = window.jupyterapp;
  await app.commands.execute('notebook:clear-all-cell-outputs');
  app.commands.execute('notebook:run-all-cells');  // not awaited: it ends with the run
}"""

RUN_ALL_SETTLED = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w.sessionContext.session.kernel;
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')];
  return k.status === 'idle' && !prompts.some(p => p.textContent.includes('[*]'));
}"""

CELL_IDS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.id)"""

CODE_CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .map(c => ({id: c.model.id, source: c.model.sharedModel.getSource(),
              count: c.model.executionCount,
              tags: c.model.getMetadata('tags') || [],
              outputs: c.model.outputs.toJSON()}))"""


def run_all(page: Page, timeout_s: float = 300) -> list[dict[str, Any]]:
    """Clear the saved outputs, Run All, as a user does, and wait until nothing is queued
    or running (twice, a second apart: the kernel is idle for a moment between two cells).
    Returns every code cell's source, execution count (None: never ran), tags, outputs
    (nbformat JSON), and whether the run inserted it (``%llm fix`` adds a cell)."""
    before = set(page.evaluate(CELL_IDS))
    page.evaluate(RUN_ALL)
    page.wait_for_function("() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]"
                           ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
                           timeout=30_000, polling=100)
    deadline = time.monotonic() + timeout_s
    settled = 0
    while settled < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Run All still running after {timeout_s:g}s")
        settled = settled + 1 if page.evaluate(RUN_ALL_SETTLED) else 0
        time.sleep(1.0)
    cells: list[dict[str, Any]] = page.evaluate(CODE_CELLS)
    return [{**c, "inserted": c["id"] not in before} for c in cells]


def shutdown_kernel(page: Page) -> None:
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")


def failed_widget_text(text: str) -> list[str]:
    """The marks of a widget that did not render (its text repr or a placeholder)."""
    return [mark for mark in FAILED_WIDGET_TEXT if mark in text]


def launch_args() -> dict[str, Any]:
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}
