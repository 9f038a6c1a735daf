"""The notebook as context, from a cell (issue 13): ``--cells``, ``--vars``, ``--error``,
``--show-context``, ``%llm fix`` / ``%llm explain``, the context window, secrets masked in
whatever is sent. The loopback server records each request body: the tests read what the
model was really sent."""

from __future__ import annotations

import re

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.magic.conftest import WriteProviders, local, sent
from tests.magic.conftest import run_shown as run
from tests.support.faultserver import FaultServer

FIX = "Guard the division.\n```python\ntotal = 10\nprint(total / max(count, 1))\n```"
TOKEN = "tok-CONTEXT-SECRET-5f2a9c81d7e3"


@pytest.fixture
def ctx_shell(shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
              monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    write_providers([local("alpha", fault.base_url("ok", text=FIX),
                           models=[{"name": "m", "context_window": 2048}])])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    return shell


def test_cells_and_vars_go_with_the_prompt_and_the_footer_says_so(
        ctx_shell: InteractiveShell, fault: FaultServer) -> None:
    import pandas as pd

    import timmy_magic

    run(ctx_shell, "x = 41")
    run(ctx_shell, "y = x + 1\ny")
    ctx_shell.user_ns["df"] = pd.DataFrame({"city": ["Oslo", "Lima"], "pop": [0.7, 10.0]})
    res, shown = run(ctx_shell, "%%llm --cells 2 --vars df\nWhat is y, and the largest city?")
    assert res.error_in_exec is None
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert "x = 41" in user and "y = x + 1" in user and "# Out[" in user  # cells, output
    assert "DataFrame: 2 rows × 2 columns" in user and "Lima" in user  # the summary
    assert user.rstrip().endswith("What is y, and the largest city?")
    assert "context: 2 cells, 1 var" in shown
    rows = timmy_magic.last().context
    assert [r["kind"] for r in rows] == ["cell", "cell", "var"] and rows[2]["name"] == "df"


def test_show_context_sends_nothing(ctx_shell: InteractiveShell, fault: FaultServer) -> None:
    run(ctx_shell, "a = 1")
    res, shown = run(ctx_shell, "%%llm --cells 1 --show-context\nexplain a")
    assert res.error_in_exec is None and sent(fault) == []
    assert "| kind | name |" in shown and "a = 1" in shown and "explain a" in shown


def test_secret_values_are_masked_in_whatever_is_sent(ctx_shell: InteractiveShell,
                                                      fault: FaultServer) -> None:
    run(ctx_shell, "import os\nenv = dict(os.environ)")
    res, shown = run(ctx_shell, "%%llm --vars env\nWhich variables are set? {env}")
    assert res.error_in_exec is None
    body = repr(sent(fault)[-1])
    assert "MY_SERVICE_TOKEN" in body and TOKEN not in body  # the name, never the value
    assert "masked" in shown


def test_error_and_fix_and_explain(ctx_shell: InteractiveShell, fault: FaultServer) -> None:
    res, _ = run(ctx_shell, "count = 0\ntotal = 10\nprint(total / count)")
    assert isinstance(res.error_in_exec, ZeroDivisionError)
    run(ctx_shell, "%%llm --error\nwhy?")
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert "ZeroDivisionError" in user and "print(total / count)" in user

    res, shown = run(ctx_shell, "%llm fix")
    assert res.error_in_exec is None, shown
    body = sent(fault)[-1]["messages"]
    assert body[0]["role"] == "system" and "corrected cell" in body[0]["content"]
    assert "print(total / count)" in body[-1]["content"]
    assert ctx_shell.rl_next_input == "total = 10\nprint(total / max(count, 1))"
    assert "fix proposed in a new cell below: Guard the division." in shown

    res, _ = run(ctx_shell, "%llm explain")
    assert res.error_in_exec is None
    assert "Do not write out a corrected cell" in sent(fault)[-1]["messages"][0]["content"]


def test_without_an_error_fix_is_one_line(shell: InteractiveShell, fault: FaultServer,
                                          write_providers: WriteProviders) -> None:
    import sys

    for name in ("last_exc", "last_value", "last_type", "last_traceback"):
        if hasattr(sys, name):
            delattr(sys, name)
    write_providers([local("alpha", fault.base_url("ok", text="x"))])
    run(shell, "%load_ext timmy_magic")
    for line in ("%llm fix", "%%llm --error\nwhy?", "%%llm --vars nope\nhi",
                 "%%llm --cells x:y\nhi"):
        res, shown = run(shell, line)
        assert type(res.error_in_exec).__name__ == "UsageError", (line, shown)
        assert "Traceback" not in shown


def test_context_is_cut_to_the_model_window(ctx_shell: InteractiveShell,
                                            fault: FaultServer) -> None:
    import timmy_magic

    for i in range(8):  # 8 values of ~500 tokens each: the window is 2048
        ctx_shell.user_ns[f"big{i}"] = f"word{i} " * 5_000
    names = ",".join(f"big{i}" for i in range(8))
    res, shown = run(ctx_shell, f"%%llm --vars {names} --max-tokens 256\nsummarise them")
    assert res.error_in_exec is None
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert len(user) < 4 * (2048 - 256) and user.rstrip().endswith("summarise them")
    assert re.search(r"context: \d vars?, ~[\d.]+k? tokens \(cut: \d vars?\)", shown), shown
    assert any(r["cut"] for r in timmy_magic.last().context)


@pytest.mark.parametrize("command", ["%llm fix", "%llm explain", "%llm explain -p alpha",
                                     "%%llm --error\nwhy?"])
def test_every_path_that_sends_an_error_fits_it_to_the_window(
        ctx_shell: InteractiveShell, fault: FaultServer, command: str) -> None:
    """A 1.6 MB error message: fix, explain (through the cascade and pinned) and --error
    all cut it to the window the same way, keeping the failing cell."""
    res, _ = run(ctx_shell, "d = {}\nd['k' * 1_600_000]")
    assert isinstance(res.error_in_exec, KeyError)
    res, shown = run(ctx_shell, command)
    assert res.error_in_exec is None, shown
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert len(user) < 2048 * 4 and "d['k' * 1_600_000]" in user
    assert "does not fit" not in shown and "cut" in shown
    # the dict the failing cell names goes with it (with fix and explain)
    assert re.search(r"context: (1 var, )?1 error", shown), shown


@pytest.mark.parametrize("answer", [
    "Here is the fix.\n```python\nError: 'populaton_m' was not found.\n```",
    "Fixed.\n```python\nx = (1,\n```",
    "Fixed.\n```python\ndf[population_m] = df[populaton_m\n```",
])
def test_a_fix_that_is_not_python_inserts_no_cell_and_says_why(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        answer: str) -> None:
    write_providers([local("alpha", fault.base_url("ok", text=answer))])
    run(shell, "%load_ext timmy_magic")
    run(shell, "count = 0\nprint(1 / count)")
    shell.rl_next_input = None
    res, shown = run(shell, "%llm fix")
    assert res.error_in_exec is None, shown
    assert shell.rl_next_input is None
    assert "is not valid Python (SyntaxError" in shown and "no cell was inserted" in shown


def test_a_fix_with_ipython_syntax_is_inserted(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    code = "%time x = 1\n!echo hi\nprint(x)"
    write_providers([local("alpha", fault.base_url("ok", text=f"Ok.\n```python\n{code}\n```"))])
    run(shell, "%load_ext timmy_magic")
    run(shell, "print(1 / 0)")
    res, shown = run(shell, "%llm fix")
    assert res.error_in_exec is None and shell.rl_next_input == code, shown
