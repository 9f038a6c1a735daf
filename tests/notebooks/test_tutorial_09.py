"""notebooks/09-tools.ipynb against a real llama-server (Gemma 3 270M, the shipped
completion-mode settings with ``capabilities: [tools]``): the prompted protocol, live.

Executed once by nbclient (no stdin, so the cells approve with ``--yes``) with a probe
cell appended that reports each cell's calls. The grammar holds every reply to a call of
an offered function with arguments its signature takes, so each call ran without an
error and the loop ended (an answer, or the round limit in one line). What the model
chose is its own; the notebook's outputs, the model's choices included, are checked
exactly by nbval in replay (test_replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, answers, cell_text, errors, execute, footer_provider
from .replay import REPLAYED

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "09-tools.ipynb"

PROBE = '''
import json as _json
print(_json.dumps([[r.ok, r.rounds, r.notes, [[c.name, c.arguments, c.error, c.approved]
                                               for c in r.tool_calls]] for r in (r, r2)]))
'''


def test_tools_against_real_gemma(llama_server: ManagedServer, tmp_path: Path) -> None:
    env = {**REPLAYED["09"].env({"llama": llama_server.base_url}, tmp_path),
           "TIMMY_CACHE_MODE": "off"}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    path = tmp_path / NOTEBOOK.name
    nbformat.write(nb, path)
    nb = execute(path, env, tmp_path, timeout=300)
    assert errors(nb) == []
    for ok, rounds, notes, calls in json.loads(cell_text(nb.cells[-1])):
        assert ok and calls and 1 <= rounds <= 3
        for name, arguments, error, approved in calls:
            assert name in ("rows", "total_kg") and set(arguments) == {"city"}
            assert error is None and approved
        assert not notes or "tool rounds" in notes[-1]
    for shown in answers(nb):
        assert shown.startswith("**Tool calls**\n\n- ")
        assert footer_provider(shown) == "local-gemma" and "tool call" in shown
