"""notebooks/05-vllm-mlx.ipynb against a real vllm-mlx server (the session fixture, on the tiny
random-weight model: real protocol and health, gibberish words).

The notebook reads the server's URL from VLLM_MLX_URL. Its providers.yaml entry has a
``launch:`` recipe, so the running server is adopted, used, and left running by ``%llm
stop``: afterwards the fixture's process must be the only one on that port.

Without any vllm-mlx (a newcomer), it still runs to the end and says why nothing answers.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.servers import ManagedServer
from timmy_magic.notebook.display.css import unwrapped
from timmy_magic.notebook.display.tables import state_badge

from .conftest import (
    NOTEBOOKS,
    answers,
    cell_text,
    code_cells,
    errors,
    execute,
    find,
    footer_provider,
    run_nbval,
    servers_on,
)

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "05-vllm-mlx.ipynb"


def only_the_fixture_serves(server: ManagedServer) -> None:
    assert server.is_running(), "an adopted server must be left running"
    port = urlsplit(server.base_url).port
    assert port is not None
    assert list(servers_on([port])) == [server.pid]


def test_vllm_mlx_final_state(vllm_mlx_server: ManagedServer, tmp_path: Path) -> None:
    nb = execute(NOTEBOOK, {"VLLM_MLX_URL": vllm_mlx_server.base_url}, tmp_path)
    assert errors(nb) == []
    assert cell_text(code_cells(nb)[0]) == "vllm-mlx: a server answers\n"
    assert cell_text(find(nb, "%llm start vllm-mlx")) == "vllm-mlx: running\n"
    assert cell_text(find(nb, "import timmy_magic")) == "'already running: adopted'"
    status = cell_text(find(nb, "%llm status"))
    assert f"| vllm-mlx | {state_badge('healthy')} |" in status and f"| {vllm_mlx_server.model} |" in status
    assert cell_text(find(nb, 'report = router.health()["vllm-mlx"]')) == \
        f"{{'status': 'healthy', 'model_loaded': True, 'model_name': '{vllm_mlx_server.model}'}}"
    assert cell_text(find(nb, "provider = ")) == "(False, None)"
    first, local_only = answers(nb)
    for md in (first, local_only):
        assert footer_provider(md) == "vllm-mlx", md
        assert f"*vllm-mlx · {vllm_mlx_server.model} · TTFT " in md
        assert "▌" not in md and "waiting for an answer" not in md
    assert re.search(r" · \d+ tok · ", first)  # the server's usage, not an estimate ("~")
    assert cell_text(find(nb, "%llm stop vllm-mlx")) == \
        "vllm-mlx: nothing to stop (no server started from here).\n"
    only_the_fixture_serves(vllm_mlx_server)


def test_vllm_mlx_passes_nbval(vllm_mlx_server: ManagedServer) -> None:
    run_nbval(NOTEBOOK, {"VLLM_MLX_URL": vllm_mlx_server.base_url})
    only_the_fixture_serves(vllm_mlx_server)


def test_vllm_mlx_runs_to_the_end_for_a_newcomer(tmp_path: Path) -> None:
    """No vllm-mlx installed and nothing answering at its URL (any machine but a Mac set up
    for it): every cell runs, the notebook says why there is no answer, and the cells that
    need the server show what happened instead of raising."""
    path = os.pathsep.join((str(Path(sys.executable).parent), "/usr/bin", "/bin"))
    assert shutil.which("vllm-mlx", path=path) is None
    nb = execute(NOTEBOOK, {"VLLM_MLX_URL": "http://127.0.0.1:9", "PATH": path}, tmp_path)
    assert errors(nb) == []
    assert cell_text(code_cells(nb)[0]).startswith(
        "vllm-mlx: not installed here (no vllm-mlx command) and nothing answers at "
        "http://127.0.0.1:9.\n")
    assert unwrapped(cell_text(find(nb, "%llm start vllm-mlx"))).startswith(
        "**timmy-magic: could not start vllm-mlx**")
    for md in answers(nb):
        assert unwrapped(md).startswith(
            "**timmy-magic: pinned provider 'vllm-mlx' did not answer**"), md
    assert cell_text(find(nb, "answer = timmy_magic.last()")) == "'no answer'"
    assert cell_text(find(nb, "answer = timmy_magic.last()", 1)) == "'no answer'"
    # the explanations run the same
    assert "health http://127.0.0.1:8000/health" in cell_text(find(nb, "from timmy_magic.providers"))
    assert cell_text(find(nb, "provider = ")) == "(False, None)"
