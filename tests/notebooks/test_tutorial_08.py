"""notebooks/08-side-by-side.ipynb (issue 16): real llama-server (Gemma 3 270M) and real
vllm-mlx (tiny model) side by side, under nbclient (the grid, the Comparison, --chat
keep) and under nbval (the Comparison's columns and the conversation checked exactly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, code_cells, errors, execute, find, run_nbval

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "08-side-by-side.ipynb"


@pytest.fixture
def env(llama_server: ManagedServer, vllm_mlx_server: ManagedServer) -> dict[str, str]:
    return {"LLAMA_SERVER_URL": llama_server.base_url,
            "VLLM_MLX_URL": vllm_mlx_server.base_url, "TIMMY_CACHE_MODE": "off"}


def test_side_by_side_final_state(env: dict[str, str], tmp_path: Path) -> None:
    nb = execute(NOTEBOOK, env, tmp_path)
    assert errors(nb) == []
    grid = find(nb, "%%llm -p llama-server,vllm-mlx --max-tokens 24").outputs
    final = [o for o in grid if "text/html" in o.get("data", {})][-1]["data"]["text/html"]
    assert final.count("class='tm-col'") == 2 and "llama-server" in final and "vllm-mlx" in final
    assert "TTFT" in final and "tok/s" in final and "<b>" in final  # the best figures
    assert "▌" not in final and "waiting" not in final  # the final render, not a live one
    labels = find(nb, 'print(both.labels').outputs[0]["text"]
    assert labels.startswith("['llama-server', 'vllm-mlx'] [True, True]")
    turns = code_cells(nb)[-1].outputs[0]["data"]["text/plain"]
    assert turns == "['llama-server', 'llama-server']"


def test_side_by_side_under_nbval(env: dict[str, str]) -> None:
    run_nbval(NOTEBOOK, env)
