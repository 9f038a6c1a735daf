"""Structured output and batch from a notebook's side (issue 14): ``%%llm --schema NAME``
(``VAR.data``, the table, an invalid answer's one-line block, the cache), and
``timmy_magic.map`` in a kernel (the progress bar, ``last()``, re-runs that skip rows the
answer cache holds, replay). The loopback server counts the requests that went out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.faultserver import FaultServer

GOOD = '{"city": "Paris", "country": "France"}'


def run(shell: InteractiveShell, source: str) -> tuple[object, str]:
    with capture_output() as cap:
        res = shell.run_cell(source)
    shown = cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)
    return res, shown


def chats(fault: FaultServer) -> int:
    return sum(1 for r in fault.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
def loaded(shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    texts = json.dumps(['{"city": "Paris"}', GOOD])
    write_providers([local("alpha", fault.base_url("sequence", texts=texts, case="cell")),
                     local("echo", fault.base_url("prompt", case="map"), priority=2)])
    run(shell, "%load_ext timmy_magic")
    run(shell, "from pydantic import BaseModel\n"
               "class City(BaseModel):\n    city: str\n    country: str\n"
               "schema = {'type': 'object', 'properties': {'city': {'type': 'string'}},"
               " 'required': ['city']}")
    fault.reset()
    return shell


def test_schema_cell_gives_data_and_a_table(loaded: InteractiveShell,
                                            fault: FaultServer) -> None:
    res, shown = run(loaded, "%%llm -p alpha --schema City -o ans\nWhere is the Eiffel Tower?")
    assert res.error_in_exec is None
    ans = loaded.user_ns["ans"]
    assert type(ans.data).__name__ == "City" and ans.data.country == "France"
    assert ans.text == GOOD
    assert "| field | value |" in shown and "| country | France |" in shown
    # the first answer lacked "country": dropped, asked again, the trace says so
    assert [a.outcome for a in ans.trace.attempts] == ["invalid", "answered"]
    assert chats(fault) == 2


def test_schema_from_a_dict_and_an_invalid_answer_is_one_block(
        loaded: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    write_providers([local("alpha", fault.base_url("sequence", texts='["no json"]',
                                                    case="bad"))])
    run(loaded, "%llm reload")
    res, shown = run(loaded, "%%llm -p alpha --schema schema -o bad\nWhere?")
    assert res.error_in_exec is None and "Traceback" not in shown
    bad = loaded.user_ns["bad"]
    assert bad.data is None and bad.error.startswith("invalid JSON:")
    assert "Not valid:" in shown and "Stream interrupted" not in shown
    assert bad.text == "no json"


@pytest.mark.parametrize("line, why", [
    ("--schema Nope", "no variable 'Nope' in the kernel"),
    ("--schema n", "--schema n: a schema is a pydantic model class"),
    ("--schema City -f code", "-f code does not apply"),
])
def test_schema_mistakes_are_one_line_and_send_nothing(
        loaded: InteractiveShell, fault: FaultServer, line: str, why: str) -> None:
    run(loaded, "n = 3")
    res, shown = run(loaded, f"%%llm -p alpha {line}\nWhere?")  # noqa: RUF059
    assert why in shown and "Traceback" not in shown
    assert chats(fault) == 0


def test_a_cached_schema_answer_comes_back_as_data(loaded: InteractiveShell,
                                                   fault: FaultServer) -> None:
    run(loaded, "%llm cache on")
    run(loaded, "%%llm -p alpha --schema City -o a\nWhere is the Eiffel Tower?")
    sent = chats(fault)
    res, shown = run(loaded, "%%llm -p alpha --schema City -o b\nWhere is the Eiffel Tower?")  # noqa: RUF059
    b = loaded.user_ns["b"]
    assert chats(fault) == sent and b.cached and b.data.city == "Paris"


def test_map_in_a_kernel_shows_progress_and_is_last(loaded: InteractiveShell,
                                                    fault: FaultServer) -> None:
    res, shown = run(loaded, "import timmy_magic\n"
                             "rows = [{'w': w} for w in ['one', 'two', 'three']]\n"
                             "out = timmy_magic.map('say {w}', rows, provider='echo')")
    assert res.error_in_exec is None
    out = loaded.user_ns["out"]
    assert out.data == ["say one", "say two", "say three"]
    assert loaded.user_ns["timmy_magic"].last() is out
    # the progress: a widget bar shown in the cell, its label at the final count
    import re

    import ipywidgets

    model_id = re.search(r"'model_id': '(\w+)'", shown)
    assert model_id is not None, shown
    box = ipywidgets.Widget.widgets[model_id.group(1)]
    bar, label = box.children
    assert bar.value == bar.max == 3 and bar.bar_style == "success"
    assert "3/3 rows" in label.value


def test_map_rerun_with_the_cache_on_sends_only_new_rows(loaded: InteractiveShell,
                                                         fault: FaultServer) -> None:
    run(loaded, "%llm cache on")
    run(loaded, "import timmy_magic\nrows = [{'w': w} for w in 'abc']\n"
                "first = timmy_magic.map('say {w}', rows, provider='echo', progress=False)")
    assert chats(fault) == 3
    run(loaded, "rows.append({'w': 'd'})\n"
                "again = timmy_magic.map('say {w}', rows, provider='echo', progress=False)")
    again = loaded.user_ns["again"]
    assert chats(fault) == 4 and again.data == ["say a", "say b", "say c", "say d"]
    assert [r.cached for r in again.results] == [True, True, True, False]
    # replay: recorded rows answer, a new row is an error row that sent nothing
    run(loaded, "%llm cache replay")
    run(loaded, "rows.append({'w': 'e'})\n"
                "rep = timmy_magic.map('say {w}', rows, provider='echo', progress=False)")
    rep = loaded.user_ns["rep"]
    assert chats(fault) == 4 and rep.data[:4] == again.data and rep.data[4] is None
    assert "replay" in rep.errors[0].error


def test_side_by_side_sends_the_schema_to_every_column(
        loaded: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    write_providers([local("a", fault.base_url("sequence", texts=json.dumps([GOOD]), case="sa")),
                     local("b", fault.base_url("sequence", texts='["nope"]', case="sb"),
                           priority=2)])
    run(loaded, "%llm reload")
    res, shown = run(loaded, "%%llm -p a,b --schema City -o cmp\nWhere is the Eiffel Tower?")
    assert res.error_in_exec is None and "Traceback" not in shown
    cmp = loaded.user_ns["cmp"]
    assert cmp["a"].data.country == "France"
    assert cmp["b"].data is None and cmp["b"].error.startswith("invalid JSON")
    sent = [r.json for r in fault.requests if r.method == "POST"]
    assert all("response_format" in body for body in sent) and len(sent) == 3


def test_a_bad_map_call_in_a_cell_is_one_line_not_a_traceback(
        loaded: InteractiveShell, fault: FaultServer) -> None:
    res, shown = run(loaded, "import timmy_magic\n"
                             "timmy_magic.map('{nope}', [{'a': 1}], provider='echo')")
    assert res.error_in_exec is not None and chats(fault) == 0
    assert "MapError: map: {nope} in the template is not a field of the rows" in shown
    assert "Traceback" not in shown and "batch.py" not in shown
