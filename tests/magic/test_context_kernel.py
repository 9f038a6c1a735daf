"""Issue 13, in a real in-process IPython shell: cells come from the kernel's history as
``run_cell(..., store_history=True)`` keeps it, the last error from what IPython stored
when it showed the traceback, variables from the user namespace."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from timmy_magic.context import (
    ContextError,
    ImageItem,
    VarItem,
    build_context,
    cells_from_history,
    error_context,
    last_error,
    var_items,
)

SECRET = "canary-token-5f3a9c1e77"


@pytest.fixture
def ip(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """The shell with stand-in ``%%llm`` / ``%llm`` magics (their cells are history like
    any other) and no exception from an earlier test."""
    calls: list[Any] = []
    shell.register_magic_function(lambda line, cell=None: calls.append(cell), "cell", "llm")
    shell.register_magic_function(lambda line: calls.append(line), "line", "llm")
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        monkeypatch.delattr(sys, name, raising=False)
    return shell


def run(ip: InteractiveShell, *cells: str) -> None:
    for source in cells:
        ip.run_cell(textwrap.dedent(source), store_history=True)


# ---------------------------------------------------------------- cells

def test_previous_n_cells_with_outputs_leave_out_llm_cells(ip: InteractiveShell) -> None:
    run(ip, "a = 1", "b = a + 1\nb * 21", "%%llm\nwhat is b?", "%llm status", "",
        "c = b")
    items = cells_from_history(ip, "2")
    assert [i.name for i in items] == ["In[2]", "In[5]"]  # an empty cell gets no number
    assert items[0].source == "b = a + 1\nb * 21" and items[0].output == "42"
    assert items[0].text == "b = a + 1\nb * 21\n# Out[2]:\n# 42"
    assert items[1].output is None and items[1].text == "c = b"
    all_cells = cells_from_history(ip, "10")
    assert [i.number for i in all_cells] == [1, 2, 5]
    with_llm = cells_from_history(ip, "10", include_llm=True)
    assert [i.number for i in with_llm] == [1, 2, 3, 4, 5]


def test_a_range_is_inclusive_and_stops_before_the_running_cell(ip: InteractiveShell) -> None:
    run(ip, "x = 1", "y = 2", "z = 3", "w = 4")
    assert [i.number for i in cells_from_history(ip, "2:3")] == [2, 3]
    assert [i.number for i in cells_from_history(ip, "3:")] == [3, 4]
    assert [i.number for i in cells_from_history(ip, ":2")] == [1, 2]
    assert cells_from_history(ip, "7:9") == []
    assert cells_from_history(ip, "0") == []


def test_from_inside_a_cell_the_running_cell_is_not_its_own_context(
        ip: InteractiveShell) -> None:
    run(ip, "first = 1", "second = 2",
        "from timmy_magic.context import cells_from_history\n"
        "got = [c.number for c in cells_from_history(get_ipython(), '5')]\n"
        "got_range = [c.number for c in cells_from_history(get_ipython(), '1:99')]")
    assert ip.user_ns["got"] == [1, 2]
    assert ip.user_ns["got_range"] == [1, 2]


def test_a_dataframe_output_is_its_text_form(ip: InteractiveShell) -> None:
    run(ip, "import pandas as pd\ndf = pd.DataFrame({'col': [10, 20]})\ndf")
    [item] = cells_from_history(ip, "1")
    assert item.output is not None and "col" in item.output and "20" in item.output


# ---------------------------------------------------------------- secrets

def test_a_planted_env_secret_in_a_cell_output_never_reaches_the_prompt(
        ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    run(ip, "import os\ndict(os.environ)", "print(os.environ['MY_SERVICE_TOKEN'])",
        "secret = os.environ['MY_SERVICE_TOKEN']")
    assert SECRET in repr(ip.user_ns["Out"][1])  # planted: the kernel holds it
    assert SECRET not in (cells_from_history(ip, "1:1")[0].output or "")  # masked as read
    ctx = build_context(ip, f"Is {SECRET} valid?", cells="3", names=["secret"])
    sent = "".join(m.content for m in ctx.as_messages())
    assert SECRET not in sent and SECRET not in ctx.render_markdown()
    assert "'MY_SERVICE_TOKEN': '***'" in sent
    assert ctx.masked >= 3  # the output, the variable, the prompt
    assert "secrets masked" in ctx.note()


def test_extra_secrets_passed_in_are_masked(ip: InteractiveShell) -> None:
    run(ip, "url = 'https://api.example.com/?x=my-configured-key-1'")
    ctx = build_context(ip, "q", cells="1", extra_secrets=["my-configured-key-1"])
    assert "my-configured-key-1" not in ctx.prompt_text() and ctx.masked == 1


# ---------------------------------------------------------------- the last error

def test_last_error_names_the_cell_that_ran_and_only_user_frames(ip: InteractiveShell
                                                                ) -> None:
    run(ip, """\
        import json
        def load(text):
            return json.loads(text)
        """, "x = 1", "data = load('{')")
    err = last_error(ip)
    assert err is not None
    assert err.type == "json.decoder.JSONDecodeError" and err.name == "JSONDecodeError"
    assert "Expecting property name" in err.message
    assert err.cell_number == 3 and err.cell_source == "data = load('{')"
    assert [(f.where, f.function, f.line) for f in err.frames] == [
        ("In[3]", "<module>", "data = load('{')"),
        ("In[1]", "load", "return json.loads(text)")]
    assert err.library_frames >= 3  # IPython's run_code, json/__init__, json/decoder
    assert "json/" not in err.text and "site-packages" not in err.text
    assert "The failing cell, In[3]:\ndata = load('{')" in err.text
    assert err.heading == "Last error: json.decoder.JSONDecodeError in In[3]"


def test_a_frame_in_the_users_own_module_is_user_code(ip: InteractiveShell,
                                                      tmp_path: Path) -> None:
    (tmp_path / "mymod_ctx13.py").write_text("def boom():\n    raise KeyError('nope')\n")
    run(ip, f"import sys\nsys.path.insert(0, {str(tmp_path)!r})",
        "import mymod_ctx13\nmymod_ctx13.boom()")
    err = last_error(ip)
    assert err is not None and err.type == "KeyError" and err.cell_number == 2
    assert [(f.where, f.function) for f in err.frames] == [
        ("In[2]", "<module>"), (f"{tmp_path.name}/mymod_ctx13.py", "boom")]
    assert err.frames[1].line == "raise KeyError('nope')"


def test_a_syntax_error_names_its_cell(ip: InteractiveShell) -> None:
    run(ip, "ok = 1", "x = (1,\ny = ]")
    err = last_error(ip)
    assert err is not None and err.type == "SyntaxError"
    assert err.cell_number == 2 and err.cell_source == "x = (1,\ny = ]"
    assert err.frames and err.frames[-1].where == "In[2]"


def test_chained_errors_mention_the_cause(ip: InteractiveShell) -> None:
    run(ip, "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad') from e")
    err = last_error(ip)
    assert err is not None and "(raised while handling KeyError: 'k')" in err.text


def test_no_error_yet(ip: InteractiveShell) -> None:
    run(ip, "fine = 1")
    assert last_error(ip) is None
    with pytest.raises(ContextError, match="no exception"):
        build_context(ip, "q", error=True)
    with pytest.raises(ContextError, match="%llm fix: no exception"):
        error_context(ip, "fix")


def test_fix_context_carries_the_cell_and_traceback_masked(
        ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_API_KEY", SECRET)
    run(ip, "import os\nkey = os.environ['EXAMPLE_API_KEY']\nprint(key + 1)")
    ctx = error_context(ip, "fix")
    assert ctx.system is not None and "```python" in ctx.system
    # the error is an item, so it is fitted as --error's is; the value the cell read goes
    # with it, masked as any --vars value
    assert (ctx.items[0].kind, ctx.items[0].name) == ("var", "key")
    assert ctx.items[-1].kind == "error" and ctx.instruct
    sent = ctx.prompt_text()
    assert "TypeError" in sent and "print(key + 1)" in sent
    assert ctx.prompt == "Fix the cell In[1] (the last error above)."
    explain = error_context(ip, "explain")
    assert explain.prompt == "Explain this error: TypeError in the cell In[1] (above)."
    assert SECRET not in sent


def test_the_error_goes_last_in_a_built_context(ip: InteractiveShell) -> None:
    run(ip, "n = 0", "1 / n")
    ctx = build_context(ip, "why?", cells="1", names=["n"], error=True)
    assert [i.kind for i in ctx.items] == ["cell", "var", "error"]
    assert ctx.note().startswith("context: 1 cell, 1 var, 1 error, ~")


# ---------------------------------------------------------------- variables

def test_variables_are_summarised_and_figures_become_images(ip: InteractiveShell) -> None:
    run(ip, """\
        import numpy as np, pandas as pd
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        df = pd.DataFrame({"a": [1, 2, 3]})
        arr = np.ones((2, 3))
        fig, ax = plt.subplots()
        ax.plot([1, 2])
        cfg = {"model": "x"}
        """)
    try:
        items = var_items(ip, ["df", "arr", "fig", "df.shape", 'cfg["model"]'])
        assert [type(i) for i in items] == [VarItem, VarItem, ImageItem, VarItem, VarItem]
        assert items[0].text.startswith("pandas DataFrame: 3 rows × 1 column")
        assert items[1].text.startswith("numpy ndarray: shape (2, 3), dtype float64")
        assert isinstance(items[2], ImageItem) and items[2].data.startswith(b"\x89PNG")
        assert items[3].text == "tuple of 2 items: (3, 1)"
        assert items[4].text == "str of 1 character:\nx"
        ctx = build_context(ip, "plot?", names=["fig"])
        assert ctx.needs_vision
    finally:
        ip.run_cell("plt.close('all')")


def test_an_unknown_variable_is_a_one_line_error(ip: InteractiveShell) -> None:
    with pytest.raises(ContextError, match=r"--vars nope: name 'nope' is not defined$"):
        var_items(ip, ["nope"])
    run(ip, "obj = object()")
    with pytest.raises(ContextError, match="--vars obj.missing: .*no attribute 'missing'"):
        var_items(ip, ["obj.missing"])


def test_from_a_cell_magic_as_the_wiring_will_call_it(ip: InteractiveShell) -> None:
    """A ``%%probe`` cell magic builds the context as ``%%llm --cells 2 --error`` will:
    the running magic cell is not in it, the error from two cells back is."""
    seen: dict[str, Any] = {}

    def probe(line: str, cell: str) -> None:
        ctx = build_context(ip, cell, cells=line.strip(), error=True, include_llm=True)
        seen["cells"] = [i.name for i in ctx.items if i.kind == "cell"]
        seen["error"] = next(i for i in ctx.items if i.kind == "error").name
        seen["prompt"] = ctx.prompt.strip()

    ip.register_magic_function(probe, "cell", "probe")
    run(ip, "v = [1]", "v[3]", "w = 2", "%%probe 2\nwhy did it fail?")
    assert seen == {"cells": ["In[2]", "In[3]"], "error": "IndexError",
                    "prompt": "why did it fail?"}


def test_fix_context_reads_only_what_the_cell_names_of_the_users_own(
        ip: InteractiveShell) -> None:
    """Values and the user's own functions the failing cell names go with it; modules,
    library functions, builtins and names the cell does not use do not."""
    run(ip, "import math\nfrom os.path import join\n"
            "def area(r):\n    return math.pi * r * r\n"
            "radius = 2\nunrelated = 'x' * 50\n"
            "class Weird:\n    def __dir__(self):\n        raise RuntimeError('no')\n"
            "w = Weird()",
        "print(len(join('a', 'b')), area(radius), math.tau, w.nope, totl)")
    ctx = error_context(ip, "explain")
    assert [i.name for i in ctx.items if i.kind == "var"] == ["area", "radius", "w"]
    assert "unrelated" not in ctx.prompt_text()
    run(ip, "total = 3", "totl + 1")
    ctx = error_context(ip, "fix")
    assert ctx.prompt.endswith("Names close to the missing one: total (a variable).")
    completion = error_context(ip, "fix", completion=True)
    assert completion.system is None and not completion.instruct and not completion.items
    assert completion.prompt.endswith("totl + 1\n# NameError: name 'totl' is not defined\n"
                                      "# Close names: total (a variable)\n# Fixed cell:\n")
