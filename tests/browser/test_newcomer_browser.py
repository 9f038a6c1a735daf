"""The first ten minutes of a newcomer (issue 17), in a real JupyterLab 4 and headless
Chromium: the packaged default providers.yaml only (no providers.yaml in the working dir,
a fresh HOME, so no user config, no trusted files, no answer cache, the Gemma GGUF
assembled anew), no server URL or API key in the environment.

A new notebook: ``%load_ext``, ``%llm panel``, a ``%%llm`` cell, ``%llm status`` and
``%llm bench``; then every tutorial of notebooks/ with its saved outputs cleared and Run
All. Asserted on what the page shows: no math typesetting inside outputs (a ``$`` eaten
by MathJax), no traceback, no red "down" for a default provider the newcomer never
started, every cell of a Run All executed (none left behind by an error).

The only settings given are free ports for the servers a notebook starts itself
(``TIMMY_LOCAL_PORT`` of the shipped local-gemma, ``GEMMA_*_PORT`` of tutorials 02 and
04), so a run never meets another one's server. Screenshots go to
artifacts/browser/newcomer/ (git-ignored); the ones shown in the README were copied to
docs/ from there.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.notebooks.conftest import no_servers_left
from timmy_magic.config import load_config, packaged_default

from .lab import (
    JupyterLab,
    cell,
    failed_widget_text,
    free_port,
    open_notebook,
    run_all,
    run_cell,
    shutdown_kernel,
    write_notebook,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser" / "newcomer"
TUTORIALS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
DEFAULTS = [p.name for p in load_config(packaged_default()).providers]
NOT_INHERITED = ("LLAMA_SERVER_URL", "VLLM_MLX_URL", "MLX_LM_URL", "OLLAMA_HOST",
                 "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MPLBACKEND", "IPYTHONDIR",
                 "GEMMA_PORT", "CLOUD_PORT", "GEMMA_A_PORT", "GEMMA_B_PORT")
MATH = "mjx-container, .MathJax, .katex, .MathJax_Display, mjx-math"
RED_STATES = ("down", "circuit_open")
NEW_CELLS = [
    "%load_ext timmy_magic",
    "%llm panel",
    "%%llm\nA Jupyter notebook is",
    "%llm status",
    "%llm bench -c 1,2 -n 2 --max-tokens 32 -o res",
    "print([round(r['output_tokens'] / r['completed']) for r in res.records])",
    "from IPython.display import Markdown\nMarkdown('negative control: $1 and $2')",
]
DEAD_ENDS: dict[str, str] = {}
"""Tutorials that still stop a newcomer's Run All, with why (a strict xfail each): none
since 05 and 08 fall back to what a newcomer has. Strict: once one runs through, drop it."""


class DeadEnd(AssertionError):
    """Run All stopped before the last cell."""


def inherited(name: str) -> bool:
    return not (name.startswith(("TIMMY_", "XDG_")) or name in NOT_INHERITED)


class Newcomer:
    def __init__(self, lab: JupyterLab, ports: list[int]) -> None:
        self.lab, self.ports = lab, ports


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    base = tmp_path_factory.mktemp("newcomer")
    home, root = base / "home", base / "work"
    home.mkdir()
    root.mkdir()
    for name in TUTORIALS:
        shutil.copyfile(ROOT / "notebooks" / name, root / name)
    shutil.copytree(ROOT / "notebooks" / "data", root / "data")  # what tutorials read
    write_notebook(root / "first-steps.ipynb", NEW_CELLS)
    assert not (root / "providers.yaml").exists()
    ports = {name: free_port() for name in ("TIMMY_LOCAL_PORT", "GEMMA_A_PORT",
                                            "GEMMA_B_PORT", "GEMMA_PORT", "CLOUD_PORT")}
    env = {"HOME": str(home), **{k: str(v) for k, v in ports.items()}}
    lab = JupyterLab(root, env, base / "lab.log", inherit=inherited)
    try:
        yield Newcomer(lab, list(ports.values()))
    finally:
        lab.stop()
    # the servers the kernels started went with them
    no_servers_left(ports.values())


def shot(target: Page | Locator, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target.screenshot(path=str(ARTIFACTS / name))


def shot_cells(page: Page, first: int, last: int, name: str) -> None:
    """One screenshot of cells ``first`` to ``last`` of the notebook."""
    cell(page, first).evaluate("e => e.scrollIntoView({block: 'start'})")
    top, bottom = cell(page, first).bounding_box(), cell(page, last).bounding_box()
    assert top is not None and bottom is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), clip={
        "x": top["x"], "y": top["y"], "width": top["width"],
        "height": bottom["y"] + bottom["height"] - top["y"]})


def badge(page: Page, name: str) -> Locator:
    return page.locator(f".timmy-panel .timmy-badge[data-provider='{name}']")


def no_math(outputs: Locator) -> None:
    """No math typesetting inside outputs (a "$" or "\\(" taken for TeX)."""
    math = outputs.locator(MATH)
    found = math.evaluate_all(
        "els => els.map(e => e.closest('.jp-OutputArea-output').innerText.slice(0, 200))")
    assert found == [], found


def looks_clean(outputs: Locator) -> None:
    """No math typesetting, no red state for a default provider, no widget shown as text."""
    no_math(outputs)
    for state in RED_STATES:
        expect(outputs.locator(f"[data-state='{state}']")).to_have_count(0)
    assert failed_widget_text("\n".join(outputs.all_inner_texts())) == []


def test_a_new_notebook_with_the_default_config(newcomer: Newcomer, page: Page) -> None:
    try:
        _first_steps(newcomer, page)
    except BaseException:
        shot(page, "failure-first-steps.png")
        raise
    finally:
        shutdown_kernel(page)


def _first_steps(newcomer: Newcomer, page: Page) -> None:
    open_notebook(page, newcomer.lab, "first-steps.ipynb", reset=True)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for the tables
    loaded = run_cell(page, 0)
    expect(loaded).to_contain_text(re.compile(r"7 providers .*timmy_magic/providers\.yaml"))

    panel = run_cell(page, 1)
    expect(panel.locator(".timmy-panel")).to_have_count(1)
    # local servers never started read "not running" (grey), not "down" (red)
    for name in ("llama-server", "ollama"):
        expect(badge(page, name)).to_have_attribute("data-state", "not_running",
                                                    timeout=15_000)
    for name in ("openai", "anthropic"):
        expect(badge(page, name)).to_have_attribute("data-state", "not_configured")
    # the pin control offers only what can answer: Auto and local-gemma (startable)
    pins = page.locator(".timmy-panel .timmy-pin button")
    expect(pins).to_have_text(["Auto (cascade)", "local-gemma"])

    answer = run_cell(page, 2, timeout_s=120)
    expect(answer).to_contain_text(re.compile(r"local-gemma · gemma-3-270m · TTFT"),
                                   timeout=60_000)
    body = answer.locator(".jp-RenderedMarkdown").first.inner_text()
    words = body.split("---")[0].split()
    assert len(words) >= 5, body  # a real continuation, not a token or two
    expect(badge(page, "local-gemma")).to_have_attribute("data-state", "healthy",
                                                         timeout=15_000)
    for name in ("llama-server", "ollama"):  # tried first by the cascade, still grey
        expect(badge(page, name)).to_have_attribute("data-state", "not_running")
    looks_clean(panel)
    looks_clean(answer)
    shot_cells(page, 1, 2, "panel-and-answer.png")

    status = run_cell(page, 3)
    expect(status).to_contain_text("not running")
    expect(status).to_contain_text(re.compile(r"\d+ of \d+ answered"))
    looks_clean(status)

    bench = run_cell(page, 4, timeout_s=180)
    expect(bench).to_contain_text("local-gemma")
    expect(bench.locator("img")).not_to_have_count(0)  # the chart
    looks_clean(bench)
    shot(cell(page, 4), "bench.png")
    tokens = run_cell(page, 5)
    per_request = [int(x) for x in re.findall(r"\d+", tokens.inner_text())]
    assert len(per_request) == 2 and min(per_request) >= 24, per_request  # of 32

    outputs = page.locator(".jp-Notebook .jp-OutputArea")
    expect(outputs.locator(".jp-OutputArea-output[data-mime-type="
                           "'application/vnd.jupyter.stderr']")).to_have_count(0)
    assert "Traceback" not in page.locator(".jp-Notebook").inner_text()

    # negative control: the same detector does see "$" typeset as math
    control = run_cell(page, 6)
    expect(control.locator(MATH).first).to_be_attached(timeout=20_000)
    with pytest.raises(AssertionError, match="negative control"):
        no_math(control)


def _tutorial_params() -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(raises=DeadEnd, strict=True,
                                                    reason=DEAD_ENDS[n]))
            if n in DEAD_ENDS else n for n in TUTORIALS]


@pytest.mark.parametrize("name", _tutorial_params())
def test_every_tutorial_runs_all_for_a_newcomer(newcomer: Newcomer, page: Page,
                                                name: str) -> None:
    try:
        open_notebook(page, newcomer.lab, name, reset=True)
        cells = run_all(page, timeout_s=240)
        shot(page, f"{Path(name).stem}.png")
        _check_run(page, name, cells)
    finally:
        shutdown_kernel(page)


def _check_run(page: Page, name: str, cells: list[dict[str, Any]]) -> None:
    outputs = page.locator(".jp-Notebook .jp-OutputArea")
    no_math(outputs)
    assert failed_widget_text(page.locator(".jp-Notebook").inner_text()) == []
    errors, tracebacks = [], []
    for i, c in enumerate(cells):
        expected = "raises-exception" in c["tags"]
        for o in c["outputs"]:
            if o["output_type"] == "error" and not expected:
                errors.append(f"cell {i} ({c['source'][:40]!r}): {o['ename']}: {o['evalue']}")
            text = o.get("text") or "".join(str(v) for v in o.get("data", {}).values())
            if "Traceback (most recent call last)" in "".join(text) and not expected:
                tracebacks.append(f"cell {i}: {''.join(text)[:300]}")
    assert tracebacks == [], tracebacks
    # a tutorial on the shipped config shows no red row for what the newcomer never set up
    shipped = any("timmy_magic/providers.yaml" in str(o) for c in cells for o in c["outputs"])
    if shipped:
        for state in RED_STATES:
            expect(outputs.locator(f"[data-state='{state}']")).to_have_count(0)
    not_run = [i for i, c in enumerate(cells) if c["count"] is None and not c["inserted"]]
    if not_run or errors:
        raise DeadEnd(f"{name}: Run All stopped; not run: cells {not_run}; errors: {errors}")


FIX_CELLS = [
    "%load_ext timmy_magic",
    ("import pandas as pd\n"
     "df = pd.DataFrame({'country': ['Chile', 'Peru'], 'population_m': [19.6, 34.0]})"),
    "df['populaton_m'].mean()",
    "%llm explain",
    "%llm fix --max-tokens 48",
    "%%llm -f code --max-tokens 48\ndef mean_population(df):",
]


def test_fix_explain_and_code_on_the_default_model_insert_no_junk(
        newcomer: Newcomer, page: Page) -> None:
    """What a newcomer tries first after an error, on the shipped default (a base model):
    explain says in one block that it needs a chat model and how to add one; fix and
    ``-f code`` insert a cell only if it is Python that parses (and, for fix, no longer
    uses the missing name), else say why nothing was inserted."""
    from IPython.core.inputtransformer2 import TransformerManager

    write_notebook(newcomer.lab.root / "fix-steps.ipynb", FIX_CELLS)
    try:
        open_notebook(page, newcomer.lab, "fix-steps.ipynb", reset=True)
        for i in (0, 1, 2):
            run_cell(page, i, timeout_s=120)
        expect(cell(page, 2).locator(".jp-OutputArea")).to_contain_text("KeyError")
        explain = run_cell(page, 3, timeout_s=120)
        expect(explain).to_contain_text("does not follow instructions")
        expect(explain).to_contain_text("Add a chat model to providers.yaml")
        code = run_cell(page, 5, timeout_s=120)  # last first: an insert goes below it
        fix = run_cell(page, 4, timeout_s=120)
        expect(fix).to_contain_text("asked as code to continue")
        fix_text, code_text = fix.inner_text(), code.inner_text()
        assert ("fix proposed in a new cell below" in fix_text
                or "no cell was inserted" in fix_text), fix_text
        assert ("code inserted into a new cell below" in code_text
                or "no cell was inserted" in code_text), code_text
        cells = page.locator(".jp-Notebook .jp-Cell .cm-content").all_inner_texts()
        expected = ("fix proposed" in fix_text) + ("code inserted" in code_text)
        assert len(cells) == len(FIX_CELLS) + expected, cells
        inserted = [c for c in cells if c.strip() not in {s.strip() for s in FIX_CELLS}]
        assert len(inserted) == expected, inserted
        for source in inserted:  # what was inserted runs as a cell
            compile(TransformerManager().transform_cell(source), "<inserted>", "exec")
        assert "Traceback" not in "".join(
            cell(page, i).locator(".jp-OutputArea").inner_text() for i in (3, 4))
        shot(page, "fix-steps.png")
    finally:
        shutdown_kernel(page)
