"""notebooks/10-background.ipynb against a real llama-server (Gemma 3 270M, the shipped
completion-mode settings): background cells.

Executed once by nbclient with a probe cell appended, which reports what the kernel
holds (each job's kind, state and answer; that the foreground cell ran while the story
was still being written), so the assertions read objects, not reprs. The model's answers
are checked exactly by nbval in replay (test_replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, cell_text, errors, execute, find
from .replay import REPLAYED

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "10-background.ipynb"

PROBE = '''
import json as _json
import timmy_magic.notebook as _nb
_jobs = list(_nb.session().jobs)
print(_json.dumps({
    "jobs": [[j.kind, j.status, j.var, j.cell is not None] for j in _jobs],
    "story": [story.ok, story.provider, len(story.text) > 20, story.usage.output_tokens],
    "rows": [r.ok for r in rows.results],
}))
'''


@pytest.fixture
def env(llama_server: ManagedServer, tmp_path: Path) -> dict[str, str]:
    live = REPLAYED["10"].env({"llama": llama_server.base_url}, tmp_path)
    return {**live, "TIMMY_CACHE_MODE": "off"}


def test_background_tutorial_final_state(env: dict[str, str], tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    path = tmp_path / NOTEBOOK.name
    nbformat.write(nb, path)
    done = execute(path, env, tmp_path)
    assert errors(done) == []
    # the --bg cell's output is its streamed answer, rendered at the end with its footer
    story = cell_text(find(done, "%%llm --bg -o story"))
    assert "local-gemma" in story and "tok/s" in story
    assert cell_text(find(done, "print(type(story)")) == "Job llm\n"
    assert cell_text(find(done, "story.text == answer.text")) == "(True, True)"
    probe = json.loads(cell_text(done.cells[-1]))
    assert probe["jobs"] == [["llm", "done", "story", True], ["map", "done", None, True]]
    assert probe["story"][:3] == [True, "local-gemma", True]
    assert probe["rows"] == [True, True, True, True]
    table = cell_text(find(done, "%llm jobs"))
    assert "1 (story)" in table and "map" in table
