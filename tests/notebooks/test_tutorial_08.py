"""notebooks/08-side-by-side.ipynb (issue 16): real llama-server (Gemma 3 270M) and real
vllm-mlx (tiny model) side by side, under nbclient (the grid, the Comparison, --chat
keep) and under nbval (the Comparison's columns and the conversation checked exactly).
With no server URL set (a newcomer, issue 17), the shipped local-gemma asked two ways
(completion and chat) on the one llama-server it starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.servers import ManagedServer, free_port

from .conftest import (
    NOTEBOOKS,
    cell_text,
    code_cells,
    errors,
    execute,
    find,
    no_servers_left,
    run_nbval,
)

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "08-side-by-side.ipynb"


@pytest.fixture
def env(llama_server: ManagedServer, vllm_mlx_server: ManagedServer) -> dict[str, str]:
    return {"LLAMA_SERVER_URL": llama_server.base_url,
            "VLLM_MLX_URL": vllm_mlx_server.base_url, "TIMMY_CACHE_MODE": "off"}


def test_side_by_side_final_state(env: dict[str, str], tmp_path: Path) -> None:
    nb = execute(NOTEBOOK, env, tmp_path)
    assert errors(nb) == []
    assert cell_text(code_cells(nb)[0]) == "%%llm -p llama-server,vllm-mlx\n"
    grid = find(nb, "%%llm $columns --max-tokens 24").outputs
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


def final_grid(nb: object, source_start: str) -> str:
    outputs = find(nb, source_start).outputs
    return [o for o in outputs if "text/html" in o.get("data", {})][-1]["data"]["text/html"]


def test_side_by_side_for_a_newcomer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No URL set: the shipped local-gemma, started on first need, as a completion and as a
    chat; every cell runs, and the completion column answers as the base model should."""
    for var in ("LLAMA_SERVER_URL", "VLLM_MLX_URL", "TIMMY_PROVIDERS"):
        monkeypatch.delenv(var, raising=False)
    port = str(free_port())
    try:
        nb = execute(NOTEBOOK, {"TIMMY_LOCAL_PORT": port, "TIMMY_CACHE_MODE": "off"}, tmp_path)
    finally:
        no_servers_left([port])
    assert errors(nb) == []
    assert cell_text(code_cells(nb)[0]) == \
        "%%llm -p local-gemma -m gemma-3-270m,gemma-3-270m-chat\n"
    grid = final_grid(nb, "%%llm $columns --max-tokens 24")
    assert grid.count("class='tm-col'") == 2 and "gemma-3-270m-chat" in grid
    assert "red, blue and yellow" in grid  # the completion column
    labels = find(nb, "print(both.labels").outputs[0]["text"]
    assert labels == "['gemma-3-270m', 'gemma-3-270m-chat'] [True, True]\nlocal-gemma local-gemma\n"
    assert " oxygen" in final_grid(nb, "%%llm $columns --chat")
    assert cell_text(find(nb, "pair.keep(0)")) == "'local-gemma'"
    # the conversation goes on: "Its" is read as water (H2O, or H<sub>2</sub>O in Markdown)
    assert re.search(r"H(<sub>)?2(</sub>)?O", cell_text(find(nb, "%%llm $first_column --chat")))
    turns = code_cells(nb)[-1].outputs[0]["data"]["text/plain"]
    assert turns == "['local-gemma', 'local-gemma']"
