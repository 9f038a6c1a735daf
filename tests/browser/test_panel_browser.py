"""End to end in a real JupyterLab 4 and headless Chromium: %load_ext, the panel, %%llm
against a real vllm-mlx server (plus a loopback fault-server provider as the second one),
pinning from the panel, a server stopped and its badge turning red after a refresh.
Screenshots go to artifacts/browser/ (git-ignored)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.faultserver import FaultServer
from tests.support.fixtures import ServerFactory
from tests.support.servers import ManagedServer

from .lab import (
    RUN_CELL,
    JupyterLab,
    cell,
    failed_widget_text,
    open_notebook,
    run_cell,
    write_notebook,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
GREEN, RED = "rgb(26, 127, 55)", "rgb(207, 34, 46)"
CELLS = [
    "%load_ext timmy_magic",
    "%llm panel",
    "%%llm --max-tokens 8\nSay hello.",
    "import ipywidgets as w\nprint(repr(w.HBox([w.Label('negative control')])))",
    "%%llm --max-tokens 8\nSay hello again.",
    "%llm unpin",
    # keeps the kernel busy while the router's own thread probes: the panel must update live
    ("import time\nfrom timmy_magic import get_router as router\n"
     "router().runner.submit(router().acheck_health())\ntime.sleep(8)"),
    "%%llm -p vllm-mlx,backup --max-tokens 8\nSay hello, side by side.",
]


class Stack:
    def __init__(self, vllm: ManagedServer, lab: JupyterLab) -> None:
        self.vllm, self.lab = vllm, lab


@pytest.fixture
def stack(server_factory: ServerFactory, tmp_path: Path) -> Iterator[Stack]:
    vllm = server_factory.vllm_mlx()  # private: this test stops it
    with FaultServer(cap=10) as fault:
        providers = tmp_path / "providers.yaml"
        providers.write_text(
            "cascade:\n  health_timeout_seconds: 1\n  first_token_timeout_seconds: 20\n"
            "cloud_gate:\n  daily_budget_usd: 1.0\nproviders:\n"
            f"  - {{name: vllm-mlx, type: vllm_mlx, priority: 1, base_url: '{vllm.base_url}',"
            f" models: [{{name: {vllm.model}}}]}}\n"
            f"  - {{name: backup, type: vllm_mlx, priority: 2,"
            f" base_url: '{fault.base_url('ok', tokens=4)}', models: [{{name: fault-model}}]}}\n")
        root = tmp_path / "nb"
        root.mkdir()
        write_notebook(root / "panel.ipynb", CELLS)
        lab = JupyterLab(root, {"TIMMY_PROVIDERS": str(providers)}, tmp_path / "lab.log")
        try:
            yield Stack(vllm, lab)
        finally:
            lab.stop()


def badge(page: Page, name: str) -> Locator:
    return page.locator(f".timmy-panel .timmy-badge[data-provider='{name}']")


def background(loc: Locator) -> str:
    return str(loc.evaluate("e => getComputedStyle(e).backgroundColor"))


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.mark.integration
def test_panel_in_jupyterlab(stack: Stack, page: Page) -> None:
    try:
        _scenario(stack, page)
    except BaseException:
        shot(page, "failure.png")
        raise


def _scenario(stack: Stack, page: Page) -> None:
    open_notebook(page, stack.lab, "panel.ipynb")
    loaded = run_cell(page, 0)
    expect(loaded).to_contain_text("2 providers")

    # the panel renders as widgets, not as their text repr
    out = run_cell(page, 1)
    expect(out.locator(".timmy-panel")).to_have_count(1)
    expect(out.locator(".timmy-panel .widget-toggle-buttons")).to_have_count(1)
    expect(badge(page, "vllm-mlx")).to_have_attribute("data-state", "healthy", timeout=15_000)
    expect(badge(page, "backup")).to_have_attribute("data-state", "healthy")
    assert background(badge(page, "vllm-mlx")) == GREEN
    assert failed_widget_text(out.inner_text()) == []
    # detail on hover: the server's own /health fields, in the row's title
    vllm_row = page.locator(".timmy-panel .timmy-row[data-provider='vllm-mlx']")
    expect(vllm_row).to_have_attribute("title", re.compile(r"model_loaded: True"))
    expect(vllm_row).to_have_attribute("title", re.compile(r"model_name: tiny"))

    # the cascade answers from vllm-mlx; the panel's metrics follow live
    answer = run_cell(page, 2)
    expect(answer).to_contain_text(re.compile(r"vllm-mlx · tiny · TTFT"), timeout=30_000)
    requests = page.locator(".timmy-panel tr[data-provider='vllm-mlx'] td").nth(4)
    expect(requests).to_have_text("1", timeout=5_000)

    # negative control: the same detector does see a widget shown as text
    control = run_cell(page, 3)
    expect(control).to_contain_text("HBox(children=")
    assert failed_widget_text(control.inner_text()) == ["HBox(children="]
    assert failed_widget_text(out.inner_text()) == []
    shot(page, "01-panel-rendered.png")

    # pin from the panel: the next answer's footer names the pinned provider
    page.locator(".timmy-panel .timmy-pin button", has_text="backup").click()
    expect(page.locator(".timmy-panel tr[data-provider='backup'] .timmy-pinned")).to_have_count(1)
    pinned = run_cell(page, 4)
    expect(pinned).to_contain_text(re.compile(r"backup · fault-model · TTFT"), timeout=30_000)
    shot(page, "02-pinned-answer.png")

    # %llm unpin reaches the panel: "Auto (cascade)" is selected again
    run_cell(page, 5)
    auto = page.locator(".timmy-panel .timmy-pin button", has_text="Auto (cascade)")
    expect(auto).to_have_class(re.compile(r"mod-active"), timeout=5_000)
    expect(page.locator(".timmy-panel tr[data-provider='backup'] .timmy-pinned")).to_have_count(0)

    # stop the real server; after a refresh its badge turns red
    stack.vllm.stop()
    page.locator(".timmy-panel button", has_text="Refresh").click()
    expect(badge(page, "vllm-mlx")).to_have_attribute("data-state", "down", timeout=10_000)
    assert background(badge(page, "vllm-mlx")) == RED
    expect(badge(page, "backup")).to_have_attribute("data-state", "healthy")
    assert failed_widget_text(out.inner_text()) == []
    expect(vllm_row).to_have_attribute("title", re.compile(r"last error: .+"))
    page.locator(".timmy-panel button", has_text="details").click()
    expect(page.locator(".timmy-panel .timmy-detail").first).to_contain_text("vllm-mlx")
    shot(page, "03-server-down.png")

    # the server comes back; a health pass run while the kernel is busy turns it green live
    stack.vllm.restart()
    page.evaluate(RUN_CELL, 6)
    busy = cell(page, 6).locator(".jp-InputPrompt")
    expect(busy).to_contain_text("[*]", timeout=5_000)
    expect(badge(page, "vllm-mlx")).to_have_attribute("data-state", "healthy", timeout=6_000)
    expect(busy).to_contain_text("[*]")  # still running: the update did not wait for idle
    shot(page, "04-live-while-busy.png")
    run_cell(page, 6, timeout_s=30)  # let it finish before the server goes away

    # side by side (issue 16): two columns in one grid, each with its footer, no math
    grid = run_cell(page, 7, timeout_s=60)
    expect(grid.locator(".tm-grid .tm-col")).to_have_count(2, timeout=30_000)
    expect(grid.locator(".tm-foot").nth(0)).to_contain_text("vllm-mlx · tiny · TTFT",
                                                           timeout=30_000)
    expect(grid.locator(".tm-foot").nth(1)).to_contain_text("backup · fault-model · TTFT")
    expect(grid.locator(".tm-foot b")).not_to_have_count(0)  # the best figures in bold
    expect(grid.locator("mjx-container, .MathJax")).to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    grid.screenshot(path=str(ARTIFACTS / "05-side-by-side.png"))
