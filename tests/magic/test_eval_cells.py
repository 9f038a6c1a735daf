"""``timmy_magic.evaluate`` and ``%llm eval`` in a real IPython shell with the extension
loaded: the answer cache per (row, target) counted at the server (a re-run asks nothing,
a new target asks only its rows, replay with the server gone), the thin magic, the
summary table and chart with every label escaped, the text fallback, and bad input as
one line."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tests.magic.conftest import WriteProviders, local
from tests.support.faultserver import FaultServer

ROWS = "rows = [{'q': 'Paris', 'answer': 'Paris'}, {'q': 'Lyon', 'answer': 'Paris'}]"


def run(shell: InteractiveShell, source: str) -> tuple[object, str, list]:
    with capture_output() as cap:
        res = shell.run_cell(source)
    shown = cap.stdout + cap.stderr + "".join(repr(o.data) for o in cap.outputs)
    return res, shown, cap.outputs


def posts(fault: FaultServer, case: str) -> int:
    return sum(1 for r in fault.requests if r.method == "POST" and f"case={case}" in r.path)


@pytest.fixture
def eval_shell(shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.setenv("TIMMY_CACHE_PATH", str(tmp_path / "answers.sqlite3"))
    monkeypatch.delenv("TIMMY_CACHE_MODE", raising=False)
    write_providers([local("echo", fault.base_url("prompt", case="echo"), 1),
                     local("fixed", fault.base_url("ok", text="Paris", case="fixed"), 2),
                     local("grader", fault.base_url(
                         "ok", text='{"score": 0.75, "reason": "close"}', case="grader"), 3)])
    run(shell, "%load_ext timmy_magic")
    run(shell, "import timmy_magic\n" + ROWS)
    fault.reset()
    return shell


def test_a_rerun_asks_nothing_and_a_new_target_asks_only_its_rows(
        eval_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path) -> None:
    run(eval_shell, "%llm cache on")
    first = "ev = timmy_magic.evaluate(rows, '{q}', ['echo'], 'exact:answer', progress=False)"
    res, _, _ = run(eval_shell, first)
    assert res.error_in_exec is None and posts(fault, "echo") == 2
    run(eval_shell, first)
    assert posts(fault, "echo") == 2  # every (row, target) answered from the cache
    ev = eval_shell.user_ns["ev"]
    res, _, _ = run(eval_shell, "ev2 = timmy_magic.evaluate(rows, '{q}', ['echo', 'fixed'], "
                                "'exact:answer', progress=False)")
    assert res.error_in_exec is None
    assert posts(fault, "echo") == 2 and posts(fault, "fixed") == 2  # only the new target
    ev2 = eval_shell.user_ns["ev2"]
    assert [a.result.cached for a in ev2.answers] == [True, False, True, False]
    assert ev2.summary().loc["echo", "score_mean"] == ev.summary().loc["echo", "score_mean"]
    assert ev2.to_pandas().cached.tolist() == [True, False, True, False]
    # replay, every provider at a closed port: the same evaluation, nothing sent
    write_providers([local("echo", "http://127.0.0.1:9/v1", 1),
                     local("fixed", "http://127.0.0.1:9/v1", 2)])
    run(eval_shell, f"%llm reload {tmp_path / 'providers.yaml'}")
    run(eval_shell, "%llm cache replay")
    res, _, _ = run(eval_shell, "ev3 = timmy_magic.evaluate(rows, '{q}', ['echo', 'fixed'], "
                                "'exact:answer', progress=False)")
    assert res.error_in_exec is None
    ev3 = eval_shell.user_ns["ev3"]
    cols = ["row", "target", "text", "score", "error", "cached"]
    pd.testing.assert_frame_equal(ev3.to_pandas()[cols], ev2.to_pandas()[cols].assign(
        cached=True))
    assert eval_shell.user_ns["timmy_magic"].last() is ev3


def test_a_judges_grades_are_cached_too(eval_shell: InteractiveShell,
                                       fault: FaultServer) -> None:
    run(eval_shell, "%llm cache on")
    judged = ("ev = timmy_magic.evaluate(rows, '{q}', ['echo'], timmy_magic.judge("
              "'grader', 'Is it a city?'), progress=False)")
    for _ in range(2):
        res, shown, _ = run(eval_shell, judged)
        assert res.error_in_exec is None, shown
        assert posts(fault, "echo") == 2 and posts(fault, "grader") == 2
    ev = eval_shell.user_ns["ev"]
    assert [a.score for a in ev.answers] == [0.75, 0.75]
    assert [a.judge_reason for a in ev.answers] == ["close", "close"]
    assert ev.summary().loc["echo", "score_mean"] == 0.75


def test_the_magic_shows_the_summary_and_chart_escaped(
        eval_shell: InteractiveShell, fault: FaultServer) -> None:
    res, shown, outputs = run(
        eval_shell, '%llm eval rows "{q}" -p echo,fixed --score exact:answer -o ev')
    assert res.error_in_exec is None, shown
    ev = eval_shell.user_ns["ev"]
    assert ev.summary().score_mean.tolist() == [0.5, 1.0]
    [html_out] = [o for o in outputs if "text/html" in o.data]
    page = html_out.data["text/html"]
    assert "<table>" in page and page.count("<svg") == 2  # score vs cost, vs latency
    assert "score against cost per 1k rows" in page and "latency p50" in page
    assert "0.50 [" in page and "1.00 [" in page
    text = html_out.data["text/plain"]
    assert text.startswith("2 rows × 2 targets · scored exact:answer")
    assert "echo" in text and "fixed" in text
    # a model name is the user's text, shown escaped in the table and the chart
    fault.reset()
    res, shown, outputs = run(eval_shell, '%llm eval rows "{q}" -p echo -m "<i>m</i>"')
    assert res.error_in_exec is None, shown
    page = next(o.data["text/html"] for o in outputs if "text/html" in o.data)
    assert "<i>m</i>" not in page and "&lt;i&gt;m&lt;/i&gt;" in page


def test_the_magic_pairs_providers_and_models_and_takes_a_score_variable(
        eval_shell: InteractiveShell, fault: FaultServer) -> None:
    run(eval_shell, "def first_word(row, result):\n    return result.text.startswith('P')")
    res, shown, _ = run(eval_shell, '%llm eval rows "{q}" -p echo,fixed -m a,b '
                                    "--score first_word -o ev")
    assert res.error_in_exec is None, shown
    ev = eval_shell.user_ns["ev"]
    assert [t.label for t in ev.targets] == ["echo:a", "fixed:b"]
    assert ev.score_name == "first_word" and ev.summary().score_mean.tolist() == [0.5, 1.0]


def test_a_new_line_in_the_magics_template_is_written_backslash_n(
        eval_shell: InteractiveShell, fault: FaultServer) -> None:
    res, shown, _ = run(eval_shell, r'%llm eval rows "Q: {q}\nA:" -p echo -o ev')
    assert res.error_in_exec is None, shown
    sent = [r.json["messages"][-1]["content"] for r in fault.requests
            if r.method == "POST" and "case=echo" in r.path]
    assert sorted(sent) == ["Q: Lyon\nA:", "Q: Paris\nA:"]


def test_the_magic_exports_and_reads_results_back(
        eval_shell: InteractiveShell, fault: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    res, shown, _ = run(eval_shell, f'%llm eval rows "{{q}}" -p echo:m1 --export {out}')
    assert res.error_in_exec is None and "echo_m1.jsonl" in shown, shown
    assert posts(fault, "echo") == 0 and (out / "evaluation.json").exists()
    res, shown, _ = run(eval_shell, f'%llm eval rows "{{q}}" -p echo:m1 --results {out} '
                                    "--score exact:answer -o back")
    assert res.error_in_exec is None, shown
    back = eval_shell.user_ns["back"]
    assert [a.error for a in back.answers] == ["no results file echo_m1.results.jsonl"] * 2


@pytest.mark.parametrize("line, why", [
    ('%llm eval nope "{q}" -p echo', "ROWS 'nope' is not a variable of the kernel"),
    ('%llm eval rows "{q}" -p echo --score fuzzy', "unknown score 'fuzzy'"),
    ('%llm eval rows "{q}" -p ghost', "target 'ghost'"),
    ('%llm eval rows "{x}" -p echo', "{x} in the template is not a field of the rows"),
    ('%llm eval rows "{q}"', "the following arguments are required: -p"),
    ('%llm eval rows "{q}" -p a,b,c -m x,y', "3 providers and 2 models"),
    ('%llm eval rows "{q}" -p echo --score exact:nofield',
     "the rows have no field 'nofield'"),
])
def test_bad_input_is_one_line_and_the_shell_goes_on(
        eval_shell: InteractiveShell, fault: FaultServer, line: str, why: str) -> None:
    res, shown, _ = run(eval_shell, line)
    assert why in shown, shown
    assert "Traceback" not in shown and posts(fault, "echo") == 0
    res, _, _ = run(eval_shell, "1 + 1")
    assert res.result == 2


def test_in_a_terminal_an_evaluation_is_its_text_table(
        eval_shell: InteractiveShell) -> None:
    run(eval_shell, "ev = timmy_magic.evaluate(rows, '{q}', ['echo'], 'exact:answer', "
                    "progress=False)")
    text = repr(eval_shell.user_ns["ev"])
    head, table = text.split("\n", 1)
    assert head.startswith("2 rows × 1 target · scored exact:answer")
    assert table.splitlines()[0].split() == ["target", "score", "[95%]", "errors", "p50",
                                            "s", "p95", "s", "tok/s", "$/1k", "rows"]
    assert table.splitlines()[1].split()[:5] == ["echo", "0.50", "[0.09,", "0.91]", "0"]


# ---------------------------------------------------------------- in the background


def test_evaluate_in_the_background_returns_a_job_listed_and_kept(
        eval_shell: InteractiveShell, fault: FaultServer) -> None:
    import timmy_magic
    from timmy_magic.jobs import Job

    with capture_output() as cap:
        job = timmy_magic.evaluate(eval_shell.user_ns["rows"], "{q}", ["echo", "fixed"],
                                   timmy_magic.judge("grader", "Is it a city?"),
                                   background=True)
        assert isinstance(job, Job)
        ev = job.result(20)
    assert job.status == "done" and "4/4 rows" in job.progress.line  # the judge's pass
    assert [a.score for a in ev.answers] == [0.75] * 4 and not ev.interrupted
    assert posts(fault, "grader") == 4
    assert cap.outputs  # the progress, in the cell that started it
    deadline = time.monotonic() + 5
    while timmy_magic.last() is not ev and time.monotonic() < deadline:
        time.sleep(0.02)  # the done callback runs on the loop thread
    assert timmy_magic.last() is ev
    _, table, _ = run(eval_shell, "%llm jobs")
    assert "evaluate" in table and "2 rows × 2 targets" in table


def test_a_cancelled_background_evaluation_keeps_the_finished_answers(
        eval_shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        tmp_path: Path) -> None:
    import timmy_magic

    write_providers([local("echo", fault.base_url("prompt", slow=30, case="bgslow"), 1)])
    run(eval_shell, f"%llm reload {tmp_path / 'providers.yaml'}")
    rows = [{"q": "quick"}, {"q": "SLOW"}, {"q": "quick too"}]
    with capture_output():
        job = timmy_magic.evaluate(rows, "{q}", ["echo"], "regex:quick", background=True)
    deadline = time.monotonic() + 10
    while posts(fault, "bgslow") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the quick ones answered
    t0 = time.monotonic()
    job.cancel()
    ev = job.result(10)
    assert time.monotonic() - t0 < 5 and job.status == "cancelled"
    assert ev.interrupted and [a.score for a in ev.answers] == [1.0, None, 1.0]
    assert not ev.answers[1].asked


def test_the_magic_runs_in_the_background_with_bg(
        eval_shell: InteractiveShell, fault: FaultServer) -> None:
    from timmy_magic.jobs import Job

    res, shown, _ = run(eval_shell, '%llm eval rows "{q}" -p echo,fixed --score '
                                    "exact:answer --bg -o ev")
    assert res.error_in_exec is None, shown
    job = eval_shell.user_ns["ev"]
    assert isinstance(job, Job) and job.var == "ev"
    assert job.result(20).summary().score_mean.tolist() == [0.5, 1.0]
