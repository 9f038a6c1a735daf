"""notebooks/01-quickstart.ipynb against a real llama-server (Gemma 3 270M).

The test's providers.yaml names the server ``local-gemma``, like the managed provider of the
shipped providers.yaml, so the notebook reads the same in both set-ups. It is executed twice:
by nbclient, to assert its final state (display updates applied), and by ``pytest --nbval``
(strict), which compares every cell not tagged ``nbval-ignore-output``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ManagedServer
from timmy_magic.config import load_config, packaged_default
from timmy_magic.notebook.display.tables import state_badge

from .conftest import WriteProviders

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01-quickstart.ipynb"


@pytest.fixture
def gemma_providers(llama_server: ManagedServer, write_providers: WriteProviders) -> Path:
    # the shipped local-gemma's model: a completion-mode model with its defaults (#15)
    shipped = load_config(packaged_default()).provider("local-gemma")
    assert shipped is not None
    m = shipped.models[0]
    model = {"name": m.name, "default": True, "mode": m.mode, "temperature": m.temperature,
             "stop": list(m.stop), "params": m.params, "max_tokens": m.max_tokens}
    return write_providers([{"name": "local-gemma", "type": "llama_cpp",
                             "base_url": llama_server.base_url, "models": [model]}],
                           cascade={"first_token_timeout_seconds": 60,
                                    "timeout_seconds": 120})


def _text(output: Any) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    data = output.get("data", {})
    return str(data.get("text/markdown") or data.get("text/plain") or "")


def test_quickstart_runs_to_the_expected_final_state(gemma_providers: Path,
                                                     tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: c for c in cells}
    errors = [o for c in cells for o in c.outputs if o["output_type"] == "error"]
    assert errors == []
    load = by_source["%load_ext timmy_magic"].outputs
    assert _text(load[0]) == (f"timmy-magic: 1 provider (1 enabled) from {gemma_providers} "
                              "(health checks running in background)\n")
    streamed = [c for c in cells if c.source.startswith("%%llm")]
    assert len(streamed) == 5
    for cell in streamed:  # one display each, its placeholder replaced by the final render
        assert [o["output_type"] for o in cell.outputs] == ["display_data"], cell.source
        md = _text(cell.outputs[0])
        assert "waiting for an answer" not in md and "▌" not in md
        assert "\n\n---\n*local-gemma · gemma-3-270m · TTFT " in md, md
    assert _text(by_source["answer.provider, answer.model, answer.ok"].outputs[0]) == \
        "('local-gemma', 'gemma-3-270m', True)"
    assert _text(by_source["%llm pin local-gemma"].outputs[0]).startswith("Pinned to local-gemma")
    assert f"| local-gemma (pinned) | {state_badge('healthy')} |" in _text(by_source["%llm status"].outputs[0])
    assert _text(by_source["import timmy_magic"].outputs[0]) == "2"
    assert _text(by_source["last = timmy_magic.last()"].outputs[0]) == "('local-gemma', None)"


def test_quickstart_passes_nbval(gemma_providers: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(NOTEBOOK), "-q", "-p", "no:randomly",
         "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
         "--nbval-cell-timeout", "180"],
        cwd=ROOT, capture_output=True, text=True, timeout=400, check=False,
        env={**os.environ, "TIMMY_PROVIDERS": str(gemma_providers)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    code_cells = NOTEBOOK.read_text().count('"cell_type": "code"')
    assert f"{code_cells} passed" in proc.stdout
