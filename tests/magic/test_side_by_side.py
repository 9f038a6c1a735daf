"""Side by side (issue 16): ``%%llm -p a,b,c`` and ``-m x,y`` ask at once and stream into
columns; a failing column shows its error while the others answer; ``-o`` gives a
``Comparison``; ``--chat`` continues with the answer chosen. Against loopback servers that
record when each request arrived and what it asked."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.faultserver import FaultServer


def run(shell: InteractiveShell, source: str) -> tuple[Any, Any]:
    with capture_output() as cap:
        res = shell.run_cell(source)
    return res, cap


def chats(srv: FaultServer) -> list[Any]:
    return [r for r in srv.requests if r.path.endswith("chat/completions")]


@pytest.fixture
def sbs_shell(shell: InteractiveShell, fault: FaultServer,
              write_providers: WriteProviders) -> InteractiveShell:
    write_providers([
        local("alpha", fault.base_url("ok", text="from alpha slowly", delay=0.3)),
        local("beta", fault.base_url("ok", text="from beta slowly", delay=0.3), priority=2),
        local("broken", fault.base_url("status", code=500), priority=3),
        local("multi", fault.base_url("ok", text="some words"), priority=4,
              models=[{"name": "x"}, {"name": "y"}]),
    ])
    run(shell, "%load_ext timmy_magic")
    fault.reset()
    return shell


def test_providers_side_by_side_at_once_with_a_failing_column(
        sbs_shell: InteractiveShell, fault: FaultServer) -> None:
    import timmy_magic
    from timmy_magic.compare import Comparison

    res, cap = run(sbs_shell, "%%llm -p alpha,beta,broken -o cmp\nhello")
    assert res.error_in_exec is None, cap.stderr
    cmp = sbs_shell.user_ns["cmp"]
    assert isinstance(cmp, Comparison) and timmy_magic.last() is cmp
    assert cmp.labels == ["alpha", "beta", "broken"]
    assert cmp["alpha"].text == "from alpha slowly" and cmp["beta"].text == "from beta slowly"
    assert cmp[2].error and "500" in cmp["broken"].error and "broken" in cmp.errors
    # concurrently: beta's request arrived before alpha's answer (0.9 s of deltas) ended
    sent = {r.params.get("text"): r.time for r in chats(fault)}
    assert abs(sent["from alpha slowly"] - sent["from beta slowly"]) < 0.6, sent
    # one display updated in place; the final grid has the three columns, the error, and
    # the best figures in bold
    outs = cap.outputs
    ids = {o.transient["display_id"] for o in outs if getattr(o, "transient", None)}
    assert len(ids) == 1, ids
    final = outs[-1].data["text/html"]
    for text in ("alpha", "beta", "broken", "from alpha slowly", "from beta slowly", "500"):
        assert text in final, text
    assert "<b>" in final
    # the failed column says it has no answer, not "asking broken..." nor "~0 tok"
    assert "no answer: " in final and "asking " not in final and "~0 tok" not in final
    frame = cmp.to_pandas()
    assert list(frame["column"]) == ["alpha", "beta", "broken"]
    assert frame["error"].isna().tolist() == [True, True, False]


def test_a_comparison_shown_later_is_its_grid_while_the_extension_is_loaded(
        sbs_shell: InteractiveShell, fault: FaultServer) -> None:
    res, _ = run(sbs_shell, "%%llm -p alpha,broken -o cmp\nhello")
    assert res.error_in_exec is None
    cmp = sbs_shell.user_ns["cmp"]
    shown, _ = sbs_shell.display_formatter.format(cmp)
    assert "tm-grid" in shown["text/html"] and "from alpha slowly" in shown["text/html"]
    assert shown["text/plain"] == repr(cmp)
    res, cap = run(sbs_shell, "from IPython.display import display\ndisplay(cmp)")
    assert "tm-grid" in cap.outputs[0].data["text/html"]
    run(sbs_shell, "%unload_ext timmy_magic")
    shown, _ = sbs_shell.display_formatter.format(cmp)
    assert set(shown) == {"text/plain"}  # the value itself knows no renderer


def test_models_side_by_side_on_one_provider(sbs_shell: InteractiveShell,
                                             fault: FaultServer) -> None:
    res, _ = run(sbs_shell, "%%llm -p multi -m x,y -o cmp\nhello")
    assert res.error_in_exec is None
    cmp = sbs_shell.user_ns["cmp"]
    assert cmp.labels == ["x", "y"] and [r.provider for r in cmp] == ["multi", "multi"]
    assert sorted(r.json["model"] for r in chats(fault)) == ["x", "y"]
    assert [r.model for r in cmp] == ["x", "y"]


def test_chat_continues_with_the_answer_chosen(sbs_shell: InteractiveShell,
                                               fault: FaultServer) -> None:
    run(sbs_shell, "%%llm -p alpha,beta --chat -o pair\nhello")
    pair = sbs_shell.user_ns["pair"]
    pair.keep("beta")
    run(sbs_shell, "%%llm -p alpha --chat\nand then?")
    history = chats(fault)[-1].json["messages"]
    assert [m["content"] for m in history[:2]] == ["hello", "from beta slowly"]
    with pytest.raises(KeyError, match="no column 'gamma'"):
        pair.keep("gamma")


def test_bad_combinations_are_one_line(sbs_shell: InteractiveShell) -> None:
    for line, says in (("%%llm -p alpha,ghost\nhi", "no provider named 'ghost'"),
                       ("%%llm -p alpha,beta -m x,y\nhi", "not both"),
                       ("%%llm -p alpha,beta -f code\nhi", "does not apply side by side")):
        res, cap = run(sbs_shell, line)
        assert type(res.error_in_exec).__name__ == "UsageError", line
        assert says in cap.stderr, cap.stderr


def test_terminal_shows_labelled_blocks(sbs_shell: InteractiveShell) -> None:
    run(sbs_shell, "%config TimmyMagics.display_mode = 'terminal'")
    res, cap = run(sbs_shell, "%%llm -p alpha,broken\nhello")
    assert res.error_in_exec is None
    assert "== alpha ==\nfrom alpha slowly" in cap.stdout and "== broken ==" in cap.stdout
    assert "500" in cap.stdout
