"""notebooks/11-evaluate.ipynb against the real llama-server (Gemma 3 270M): the same
model asked as a completion and as a chat on notebooks/data/capitals.csv, under nbclient
(the summary table and chart, the tidy table, the cascade advice, the magic). Its
outputs, the model's answers included, are checked exactly by nbval in replay
(test_replay.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, cell_text, errors, execute, find
from .replay import REPLAYED, copy_data

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "11-evaluate.ipynb"


def test_evaluate_tutorial_live(llama_server: ManagedServer, tmp_path: Path) -> None:
    spec = REPLAYED["11"]
    copy_data(spec, tmp_path)
    env = {**spec.env({"llama": llama_server.base_url}, tmp_path), "TIMMY_CACHE_MODE": "on",
           "TIMMY_CACHE_PATH": str(tmp_path / "answers.sqlite3")}
    nb = execute(NOTEBOOK, env, tmp_path, timeout=300)
    assert errors(nb) == []
    shown = [o for o in find(nb, "ev").outputs if "text/html" in o.get("data", {})]
    page = shown[-1]["data"]["text/html"]
    assert "<table>" in page and page.count("<svg") == 2
    assert "local-gemma:gemma-3-270m-chat" in page
    advice = cell_text(find(nb, "print(ev.cascade"))
    assert "  - name: local-gemma\n    priority: 1" in advice
    assert "(model gemma-3-270m: make it default)" in advice
    # the magic asked nothing: every (row, target) answer came from the cache
    assert cell_text(find(nb, "print(again.summary()")).strip() == "True"
    magic = [o for o in find(nb, "%llm eval capitals").outputs if "text/html" in o.get("data", {})]
    assert "20 from the cache" in magic[-1]["data"]["text/html"]
    last = [o for o in nb.cells[-1].outputs if "text/plain" in o.get("data", {})][-1]
    assert "score_mean" in last["data"]["text/plain"]  # the background job's Evaluation
