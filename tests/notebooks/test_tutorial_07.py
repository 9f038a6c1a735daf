"""notebooks/07-structured-and-batch.ipynb against a real llama-server (Gemma 3 270M, the
shipped completion-mode settings): structured output and batch (issue 14).

Executed once by nbclient with a probe cell appended, which reports what the kernel holds
(the types of ``.data``, every map row in order, the error row, the batch file), so the
assertions read objects rather than reprs; the final progress bars are read from the
widget state nbclient saves. The notebook's outputs, the model's answers included, are
checked exactly by nbval in replay (test_replay.py); a live nbval run would check nothing
more (every cell that depends on the model is ``nbval-ignore-output`` live)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.support.servers import ManagedServer

from .conftest import NOTEBOOKS, answers, cell_text, errors, execute, find, footer_provider
from .replay import REPLAYED

pytestmark = pytest.mark.integration
NOTEBOOK = NOTEBOOKS / "07-structured-and-batch.ipynb"
WHERE = {"the Eiffel Tower": "Paris", "the Colosseum": "Rome", "Big Ben": "London",
         "the Brandenburg Gate": "Berlin", "the Sydney Opera House": "Sydney",
         "the Statue of Liberty": "New York", "the Sagrada Familia": "Barcelona",
         "the Acropolis": "Athens"}
"""The landmarks of the notebook, in its order, and (the start of) the city Gemma gives."""

PROBE = '''
import json as _json
_lines = batch.path.read_text().splitlines()
print(_json.dumps({
    "where": [type(where.data).__name__, where.ok, where.provider, where.error],
    "who": [type(who.data).__name__, sorted(who.data)],
    "places": [[row["landmark"], r.ok, r.provider, type(d).__name__, d.city if d else None]
               for row, r, d in zip(places.rows, places.results, places.data)],
    "frame": [list(places.to_pandas().columns), places.to_pandas().landmark.tolist()],
    "mixed": [[r.ok for r in mixed.results], [(e.index, e.row, e.error) for e in mixed.errors]],
    "export": [batch.rows, [_json.loads(x)["custom_id"] for x in _lines],
               [_json.loads(x)["body"]["response_format"]["type"] for x in _lines]],
    "back": [[r.ok for r in back.results], [d.city if d else None for d in back.data],
             [e.error for e in back.errors]],
}))
'''


@pytest.fixture
def env(llama_server: ManagedServer, tmp_path: Path) -> dict[str, str]:
    # the set-up the answers in notebooks/answers/ were recorded with (test_replay.py)
    live = REPLAYED["07"].env({"llama": llama_server.base_url}, tmp_path)
    return {**live, "TIMMY_CACHE_MODE": "off"}


def _progress_bars(nb: Any) -> list[tuple[int, int, str | None, str]]:
    """(max, value, bar_style, label) of every map progress bar, from the widget state."""
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = []
    for model in state.values():
        if model["model_name"] != "HBoxModel":
            continue
        bar, label = (state[ref.removeprefix("IPY_MODEL_")]["state"]
                      for ref in model["state"]["children"])
        bars.append((bar["max"], bar["value"], bar.get("bar_style") or None, label["value"]))
    return sorted(bars)


def test_structured_and_batch_against_real_gemma(env: dict[str, str], tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    path = tmp_path / NOTEBOOK.name
    nbformat.write(nb, path)
    nb = execute(path, env, tmp_path, timeout=240)
    assert errors(nb) == []
    probe = json.loads(cell_text(nb.cells[-1]))

    # %%llm --schema City: a City instance, shown as a field table, from local-gemma
    assert probe["where"] == ["City", True, "local-gemma", None]
    city_cell, who_cell = answers(nb)
    assert "| field | value |" in city_cell and "| city |" in city_cell
    assert footer_provider(city_cell) == "local-gemma" and "Not valid" not in city_cell
    # a JSON-schema dict: plain JSON values, the schema's keys
    assert probe["who"] == ["dict", ["painter", "painting"]]
    assert "| painter |" in who_cell

    # map over the DataFrame: 8 rows, in input order, each a City, each answered here
    rows = probe["places"]
    assert [r[0] for r in rows] == list(WHERE)
    assert all(ok and provider == "local-gemma" and kind == "City"
               for _, ok, provider, kind, _ in rows), rows
    right = sum(city.startswith(WHERE[landmark]) for landmark, *_, city in rows)
    assert right >= 6, rows  # answers in the wrong rows would match almost none
    columns, landmarks = probe["frame"]
    assert columns[:3] == ["landmark", "city", "country"] and landmarks == list(WHERE)
    assert {"provider", "ttft_s", "cached", "error"} <= set(columns)
    bar, summary = find(nb, "import timmy_magic").outputs  # the bar, then the MapResult
    assert "application/vnd.jupyter.widget-view+json" in bar["data"]
    assert summary["data"]["text/markdown"].startswith("*8 rows: 8 answered")

    # the record without `landmark` is one error row; the three others were answered
    oks, errs = probe["mixed"]
    assert oks == [True, True, False, True]
    [(index, row, why)] = errs
    assert index == 2 and row == {"name": "Big Ben"} and "{landmark}" in why

    # one progress bar per map, each full and green, its label the final line
    bars = _progress_bars(nb)
    assert [(b[0], b[1], b[2]) for b in bars] == [(4, 4, "success"), (8, 8, "success")]
    assert "4/4 rows · 1 error" in bars[0][3] and "8/8 rows" in bars[1][3]

    # export: one JSONL line per row, custom_id row-<n>, the schema as response_format
    n, ids, formats = probe["export"]
    assert n == 8 and ids == [f"row-{i}" for i in range(8)]
    assert formats == ["json_schema"] * 8
    assert "8 requests for gemma-3-270m" in cell_text(find(nb, "import json"))

    # map_results: the hand-written results read back, the failed line an error row
    oks, cities, why = probe["back"]
    assert oks == [True, True, False] and cities == ["Paris", "Rome", None]
    assert why == ["batch error: the request timed out"]
