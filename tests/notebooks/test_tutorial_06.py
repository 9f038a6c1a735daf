"""notebooks/06-notebook-context.ipynb against a real llama-server (Gemma 3 270M): the
notebook as context (issue 13). Executed by nbclient to assert what was sent and shown,
then by ``pytest --nbval``, which checks the context tables, the variable summary and the
masked secret exactly (the model's own words are not checked: it is a small base model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, answers, cell_text, code_cells, errors, execute, find, run_nbval
from .replay import REPLAYED

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "06-notebook-context.ipynb"


@pytest.fixture
def env(llama_server: ManagedServer, tmp_path: Path) -> dict[str, str]:
    # the set-up the answers in notebooks/answers/ were recorded with (test_replay.py)
    live = REPLAYED["06"].env({"llama": llama_server.base_url}, tmp_path)
    return {**live, "TIMMY_CACHE_MODE": "off"}


def test_notebook_context_final_state(env: dict[str, str], tmp_path: Path) -> None:
    nb = execute(NOTEBOOK, env, tmp_path)
    # the one error is the cell that is meant to fail
    assert errors(nb) == ["KeyError: 'south'"]
    shown = cell_text(find(nb, "%%llm --vars sales --show-context"))
    assert "pandas DataFrame: 4 rows × 4 columns" in shown and "revenue" in shown
    asked = answers(nb)[1]  # the real question about `sales`
    assert "context: 1 var" in asked and "local-gemma" in asked
    assert cell_text(find(nb, "import timmy_magic")).strip() == "[('var', 'sales', False)]"
    error_ctx = cell_text(find(nb, "%%llm --error --show-context"))
    assert "KeyError: 'south'" in error_ctx and "print(region, stock[region])" in error_ctx
    assert "site-packages" not in error_ctx  # user frames only
    fix = cell_text(find(nb, "%llm fix"))
    # the shipped model is a base model: fix asks it as code to continue, and only a
    # change that parses and drops the missing name becomes a cell; explain says why not
    assert "asked as code to continue" in fix, fix
    assert "fix proposed in a new cell below" in fix or "no cell was inserted" in fix, fix
    explain = cell_text(find(nb, "%llm explain"))
    assert "does not follow instructions" in explain and "Add a chat model" in explain
    masked = cell_text(find(nb, "%%llm --show-context"))
    assert "'key': '***'" in masked and "sk-demo-0123456789abcdef" not in masked
    assert "1 secret masked" in masked
    notebook_text = "".join(cell_text(c) for c in code_cells(nb)[1:])
    assert "sk-demo-0123456789abcdef" not in notebook_text.replace(
        code_cells(nb)[-2].source, "")


def test_notebook_context_under_nbval(env: dict[str, str]) -> None:
    run_nbval(NOTEBOOK, env)
