"""``%%llm --vars``: a name that is not a variable (``1df``, ``(df)``) is a one-line usage
error naming it, never a traceback; the names that worked still do (``df``, ``df.col``,
``d['k']``, ``rows[-1]``). Whatever string ``--vars`` is given, the cell shows an answer or
one line."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local, sent
from tests.support.faultserver import FaultServer


@pytest.fixture
def vars_shell(shell: InteractiveShell, fault: FaultServer,
               write_providers: WriteProviders) -> InteractiveShell:
    write_providers([local("alpha", fault.base_url("ok", text="an answer"))])
    shell.run_cell("%load_ext timmy_magic")  # type: ignore[no-untyped-call]
    shell.user_ns.update(
        df=SimpleNamespace(col=[1, 2, 3], shape=(3, 1)), d={"k": "value of k"},
        rows=["first row", "last row"], x=41)
    fault.reset()
    return shell


def ask(shell: InteractiveShell, vars_arg: str) -> tuple[object, str, str]:
    """Run ``%%llm --vars=<vars_arg>`` (quoted for the line): its error (or None), what
    it showed on stderr, and everything else it showed."""
    with capture_output() as cap:
        res = shell.run_cell(  # type: ignore[no-untyped-call]
            f"%%llm --vars={shlex.quote(vars_arg)}\nwhat is it?")
    shown = cap.stdout + "".join(repr(o.data) for o in cap.outputs)
    return res.error_in_exec, cap.stderr, shown


@pytest.mark.parametrize("bad", ["1df", "(df)", "df.", "df)", "df col", "x,2y", "a}{b",
                                 "d[k]", "rows[one]", "df..col"])
def test_a_bad_name_is_one_line_naming_it(vars_shell: InteractiveShell, fault: FaultServer,
                                          bad: str) -> None:
    error, stderr, shown = ask(vars_shell, bad)
    assert isinstance(error, UsageError), (bad, stderr, shown)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr + shown, stderr
    assert lines[0].startswith("UsageError: --vars ") and "not a variable name" in lines[0]
    wrong = bad.split(",")[-1] if bad == "x,2y" else bad
    assert repr(wrong) in lines[0]
    assert sent(fault) == []  # nothing was asked


def test_names_with_attributes_and_indexes_still_work(vars_shell: InteractiveShell,
                                                      fault: FaultServer) -> None:
    error, stderr, shown = ask(vars_shell, "x, df.col, d['k'], d[\"k\"], rows[-1]")
    assert error is None, stderr
    assert "an answer" in shown and "context: 5 vars" in shown, shown
    user = sent(fault)[-1]["messages"][-1]["content"]
    for text in ("41", "[1, 2, 3]", "value of k", "last row"):
        assert text in user, text


def test_an_unknown_name_is_still_its_own_one_line(vars_shell: InteractiveShell) -> None:
    error, stderr, _ = ask(vars_shell, "nope")
    assert isinstance(error, UsageError) and len(stderr.strip().splitlines()) == 1
    assert "--vars nope" in stderr and "not defined" in stderr


_PIECES = ["x", "df", "d", "rows", "col", "shape", "nope", "é", "_", "1", "2y", "-1",
           ".", ",", " ", "[", "]", "(", ")", "{", "}", "'", '"', "'k'", '"k"', "[0]",
           "[-1]", "\\", "$", "-", "--", "-p", "=", ":", "*", "#", "\t", "\x00", "\u200b"]
VARS = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=12).map("".join),
    st.text(st.characters(blacklist_characters="\n\r"), max_size=40),  # (no surrogates)
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vars_arg=VARS)
def test_any_vars_string_gives_an_answer_or_one_line(vars_shell: InteractiveShell,
                                                     vars_arg: str) -> None:
    error, stderr, shown = ask(vars_shell, vars_arg)
    assert "Traceback" not in stderr + shown, (vars_arg, stderr, shown)
    event("answered" if error is None else "one line")
    if error is None:
        assert "an answer" in shown, (vars_arg, shown)
    else:
        assert isinstance(error, UsageError), (vars_arg, repr(error))
        assert len(stderr.strip().splitlines()) == 1, (vars_arg, stderr)
