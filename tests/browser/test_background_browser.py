"""``%%llm --bg`` in a real JupyterLab 4 and headless Chromium: the background cell
finishes at once, and its answer streams into its own output while a later cell runs
(the kernel busy with it), then renders with its footer; the later cell's output holds
none of it. The server is the loopback fault server dripping a long answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.support.faultserver import FaultServer

from .lab import JupyterLab, cell, open_notebook, run_cell, write_notebook

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
CELLS = [
    "%load_ext timmy_magic",
    "%%llm --bg -o story\nTell a long story.",
    "import time\nfor i in range(3):\n    print('busy', i, flush=True)\n    time.sleep(2)",
    "print(story.status, story.result(30).text.count('once'))",
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[JupyterLab]:
    with FaultServer(cap=30) as fault:
        providers = tmp_path / "providers.yaml"
        url = fault.base_url("drip", text="once " * 60, interval=0.1)
        providers.write_text("cascade:\n  health_timeout_seconds: 1\nproviders:\n"
                             f"  - {{name: drip, type: llama_cpp, base_url: '{url}'}}\n")
        root = tmp_path / "nb"
        root.mkdir()
        write_notebook(root / "bg.ipynb", CELLS)
        server = JupyterLab(root, {"TIMMY_PROVIDERS": str(providers)}, tmp_path / "lab.log")
        try:
            yield server
        finally:
            server.stop()


def words(page: Page, i: int) -> int:
    return int(cell(page, i).locator(".jp-OutputArea").inner_text().count("once"))


def test_a_bg_cell_streams_into_its_own_output_while_a_later_cell_runs(
        page: Page, lab: JupyterLab) -> None:
    open_notebook(page, lab, "bg.ipynb", reset=True)
    run_cell(page, 0)
    run_cell(page, 1, timeout_s=10)  # over at once: the kernel is idle again
    assert words(page, 1) < 60
    page.evaluate("""() => { const app = window.jupyterapp, p = app.shell.currentWidget;
        p.content.activeCellIndex = 2; p.content.deselectAll();
        app.commands.execute('notebook:run-cell'); }""")
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .jp-Cell')[2]"
                           ".querySelector('.jp-OutputArea').textContent.includes('busy 0')",
                           timeout=20_000, polling=100)
    seen = [words(page, 1)]
    while "busy 2" not in cell(page, 2).locator(".jp-OutputArea").inner_text():
        page.wait_for_timeout(500)
        seen.append(words(page, 1))
    assert seen[-1] > seen[0], seen  # it grew while cell 2 held the kernel
    assert "once" not in cell(page, 2).locator(".jp-OutputArea").inner_text()
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .jp-Cell')[1]"
                           ".querySelector('.jp-OutputArea').textContent.includes('tok/s')",
                           timeout=30_000, polling=200)  # the footer: the final render
    assert words(page, 1) == 60
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "background.png"))
    out = run_cell(page, 3)
    assert "done 60" in out.inner_text()
