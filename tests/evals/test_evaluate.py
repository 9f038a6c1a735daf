"""``timmy_magic.evaluate`` against loopback servers the tests control: exact and other
scores, error rows that stop nothing, cost from configured prices, the concurrency bound
and a provider's own limit seen at the servers, a judge, the summary, the cascade advice,
and the batch JSONL round trip."""

from __future__ import annotations

import json
import math
import threading

import pandas as pd
import pytest

from tests.router.test_router_faults import make_router, prov
from tests.support.faultserver import FaultServer
from timmy_magic.evals import COLUMNS, EvalError, EvalInterrupted, Evaluation, judge, normalise
from timmy_magic.evals.figures import frontier, interval
from timmy_magic.notebook.api import evaluate

ROWS = [{"q": "Paris", "answer": "Paris"}, {"q": "Lyon", "answer": "Paris"},
        {"q": "FAIL now", "answer": "x"}, {"q": "Rome.", "answer": "rome"}]


@pytest.fixture(scope="module")
def srv():
    with FaultServer() as s:
        yield s


def priced(name: str, url: str, prio: int, price_in: float, price_out: float,
           extra: str = "") -> str:
    models = (f"models: [{{name: m1, default: true, price_per_1k_input: {price_in}, "
              f"price_per_1k_output: {price_out}}}]")
    return prov(name, url, prio, models + (f", {extra}" if extra else ""))


def test_every_target_asks_every_row_and_exact_scores_them(srv):
    echo = srv.base_url("prompt", case="exact")
    fixed = srv.base_url("ok", text="Paris", case="fixed")
    with make_router(prov("echo", echo, 1) + prov("fixed", fixed, 2)) as r:
        ev = evaluate(ROWS, "{q}", ["echo", "fixed"], "exact:answer", router=r,
                      progress=False)
    assert isinstance(ev, Evaluation) and len(ev) == 8
    table = ev.to_pandas()
    assert list(table.columns) == list(COLUMNS)
    echo_rows = table[table.target == "echo"]
    # "Rome." scores against "rome": case and end punctuation do not count
    assert echo_rows.score.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert echo_rows.error.isna().tolist() == [True, True, False, True]
    assert "400" in echo_rows.error.iloc[2]  # the failed row is kept, the others answered
    fixed_rows = table[table.target == "fixed"]
    assert fixed_rows.score.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert fixed_rows.error.isna().all()
    assert table.row.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # row-major, every target
    summary = ev.summary()
    assert list(summary.index) == ["echo", "fixed"] and summary.index.name == "target"
    assert summary.loc["echo", "score_mean"] == 0.5  # the error row scores 0
    assert summary.loc["echo", "errors"] == 1 and summary.loc["fixed", "errors"] == 0
    low, high = summary.loc["echo", ["score_low", "score_high"]]
    assert 0 < low < 0.5 < high < 1
    assert summary.loc["echo", "latency_p50_s"] > 0
    assert summary.loc["echo", "latency_p95_s"] >= summary.loc["echo", "latency_p50_s"]


def test_cost_comes_from_the_configured_prices(srv):
    cheap = srv.base_url("ok", tokens=4, case="cheap")
    dear = srv.base_url("ok", tokens=4, case="dear")
    providers = priced("cheap", cheap, 1, 0.0, 0.0) + priced("dear", dear, 2, 1.0, 2.0)
    with make_router(providers) as r:
        ev = evaluate([{"q": "one two"}, {"q": "three"}], "{q}", ["cheap", "dear:m1"],
                      router=r, progress=False)
    table = ev.to_pandas()
    dear_rows = [a for a in ev.answers if a.target.provider == "dear"]
    want = [(a.result.usage.input_tokens * 1.0 + a.result.usage.output_tokens * 2.0) / 1000
            for a in dear_rows]
    assert all(w > 0 for w in want)
    assert table[table.target == "dear:m1"].cost_usd.tolist() == pytest.approx(want)
    assert table[table.target == "cheap"].cost_usd.tolist() == [0.0, 0.0]
    s = ev.summary()
    assert s.loc["dear:m1", "cost_usd"] == pytest.approx(sum(want))
    assert s.loc["dear:m1", "cost_per_1k_rows"] == pytest.approx(sum(want) / 2 * 1000)
    assert math.isnan(s.loc["cheap", "score_mean"])  # no score: latency and cost only
    assert table.score.isna().all()


def test_at_most_concurrency_in_flight_and_a_providers_own_limit():
    rows = [{"i": i} for i in range(12)]
    with FaultServer() as a, FaultServer() as b:
        providers = (prov("a", a.base_url("ok", tokens=3, delay=0.05), 1)
                     + prov("b", b.base_url("ok", tokens=3, delay=0.05), 2,
                            "max_concurrency: 2"))
        with make_router(providers) as r:
            ev = evaluate(rows, "row {i}", ["a", "b"], concurrency=5, router=r,
                          progress=False)
        assert all(x.result.ok for x in ev.answers)
        assert b.peak_in_flight == 2  # its own limit
        # waiting for b's slots holds none of the call's: a gets at least the other three
        assert 3 <= a.peak_in_flight <= 5
    with FaultServer() as both:  # both providers on one server: the call's bound in all
        providers = (prov("a", both.base_url("ok", tokens=3, delay=0.05, p="a"), 1)
                     + prov("b", both.base_url("ok", tokens=3, delay=0.05, p="b"), 2,
                            "max_concurrency: 2"))
        with make_router(providers) as r:
            evaluate(rows, "row {i}", ["a", "b"], concurrency=5, router=r, progress=False)
        assert both.peak_in_flight == 5


def test_one_failing_target_stops_nothing(srv):
    down = srv.base_url("status", code=500, case="down")
    up = srv.base_url("prompt", case="up")
    with make_router(prov("down", down, 1) + prov("up", up, 2),
                     "  max_retries_per_provider: 0") as r:
        ev = evaluate(ROWS[:2], "{q}", ["down", "up"], "contains:answer", router=r,
                      progress=False)
    s = ev.summary()
    assert s.loc["down", "errors"] == 2 and s.loc["down", "score_mean"] == 0.0
    assert s.loc["up", "errors"] == 0 and s.loc["up", "score_mean"] == 0.5
    # each target is pinned: the failing one never fails over to the other
    assert {a.result.provider for a in ev.of("up")} == {"up"}
    assert all(a.result.provider in (None, "down") for a in ev.of("down"))


def test_regex_json_and_a_function_score(srv):
    answers = json.dumps(['{"a": 1}', "not json", "[1, 2]"])
    providers = "".join(prov(f"s{k}", srv.base_url("sequence", texts=answers, case=f"rj{k}"),
                             k) for k in range(4))
    rows = [{"n": n} for n in range(3)]

    def longer_than_five(row, result):
        return len(result.text) > 5

    def broken(row, result):
        raise ValueError("no way")

    with make_router(providers) as r:
        by_json, by_regex, by_fn = (
            evaluate(rows, "{n}", [f"s{k}"], score, concurrency=1, router=r, progress=False)
            for k, score in enumerate(["json", r"regex:\d", longer_than_five]))
        by_broken = evaluate(rows[:1], "{n}", ["s3"], broken, router=r, progress=False)
    assert [a.score for a in by_json] == [1.0, 0.0, 1.0]
    assert [a.score for a in by_regex] == [1.0, 0.0, 1.0]
    assert [a.score for a in by_fn] == [1.0, 1.0, 1.0]
    [only] = by_broken.answers
    assert only.score is None and only.error == "score: ValueError: no way"
    assert by_fn.score_name == "longer_than_five"


def test_a_judge_grades_and_its_cost_is_counted_apart(srv):
    grades = json.dumps(['{"score": 0.9, "reason": "right"}',
                         '{"score": 0.2, "reason": "wrong"}', "no json at all"])
    providers = (prov("a", srv.base_url("prompt", case="judged"), 1)
                 + priced("grader", srv.base_url("sequence", texts=grades, case="grader"),
                          2, 1.0, 1.0))
    rows = [{"q": "first"}, {"q": "second"}, {"q": "third"}]
    with make_router(providers, "  max_retries_per_provider: 0") as r:
        ev = evaluate(rows, "{q}", ["a"], judge("grader", "Is it the first word?"),
                      concurrency=1, router=r, progress=False)
    graded = [q.json for q in srv.requests if "case=grader" in q.path and q.method == "POST"]
    assert len(graded) >= 3
    assert "Is it the first word?" in graded[0]["messages"][-1]["content"]
    assert "first" in graded[0]["messages"][-1]["content"]  # the answer under judgement
    assert graded[0]["response_format"]["type"] == "json_schema"
    assert [a.score for a in ev.answers[:2]] == [0.9, 0.2]
    assert ev.answers[2].score is None and ev.answers[2].error.startswith("score: judge:")
    s = ev.summary()
    assert s.loc["a", "score_mean"] == pytest.approx(0.55)  # the ungraded row is left out
    assert s.loc["a", "cost_usd"] == 0.0 and s.loc["a", "judge_cost_usd"] > 0
    assert ev.score_name == "judge:grader"


def test_cascade_orders_the_targets_meeting_the_bar_cheapest_first(srv):
    echo = srv.base_url("prompt", case="c-echo")
    paris = srv.base_url("ok", text="Paris", case="c-paris")
    dear = srv.base_url("prompt", case="c-dear")
    providers = (priced("echo", echo, 1, 0.0, 0.0) + priced("paris", paris, 2, 0.0, 0.0)
                 + priced("dear", dear, 3, 5.0, 5.0))
    rows = [{"q": "Paris", "answer": "Paris"}, {"q": "Rome", "answer": "rome"}]
    with make_router(providers) as r:
        ev = evaluate(rows, "{q}", ["dear", "paris", "echo"], "exact:answer", router=r,
                      progress=False)
    advice = ev.cascade(min_score=0.8)
    assert advice.order == ["echo", "dear"]  # paris scores 0.5; echo is free, dear is not
    text = advice.yaml
    assert "  - name: echo\n    priority: 1  # score 1.00" in text
    assert "  - name: dear\n    priority: 2" in text
    assert "# left out: paris: score 0.50" in text and "below 0.8" in text
    evidence = advice.evidence()
    assert evidence.loc["paris", "priority"] is None or math.isnan(evidence.loc["paris",
                                                                                "priority"])
    unbarred = ev.cascade().order  # no bar: cost (the free two, by latency), then dear
    assert sorted(unbarred[:2]) == ["echo", "paris"] and unbarred[2] == "dear"
    with pytest.raises(EvalError, match="min_score must be a number in"):
        ev.cascade(min_score=2)


@pytest.mark.parametrize("targets, score, why", [
    (["nope"], None, "target 'nope': "),
    (["a:"], None, "names no model after the colon"),
    ([], None, "no targets"),
    (["a", "a"], None, "given twice"),
    (["a"], "exact:missing", "the rows have no field 'missing'"),
    (["a"], "fuzzy:x", "unknown score 'fuzzy:x'; known: exact:FIELD"),
    (["a"], "regex:(", "not a regular expression"),
    (["a"], 42, "score must be a string, a callable or judge"),
])
def test_a_bad_call_is_one_line_before_anything_is_sent(srv, targets, score, why):
    srv.reset()
    with (make_router(prov("a", srv.base_url("prompt", case="bad"), 1)) as r,
          pytest.raises(EvalError) as info):
        evaluate([{"q": "x"}], "{q}", targets, score, router=r, progress=False)
    assert why in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("evaluate: ")
    assert srv.count(path_suffix="chat/completions") == 0


def test_rows_from_a_generator_are_read_once_for_every_target(srv):
    with make_router(prov("a", srv.base_url("prompt", case="gen"), 1)) as r:
        ev = evaluate(({"q": w} for w in ("x", "y")), "{q}", ["a", "a:m"], router=r,
                      progress=False)
    assert [a.result.text for a in ev.answers] == ["x", "x", "y", "y"]


def test_targets_split_at_the_first_colon_and_tuples_work(srv):
    url = srv.base_url("prompt", case="colon")
    with make_router(prov("ollama", url, 1)) as r:
        ev = evaluate([{"q": "hi"}], "{q}", ["ollama:llama3:8b", ("ollama", "qwen:0.5b")],
                      router=r, progress=False)
    models = [q.json["model"] for q in srv.requests if "case=colon" in q.path
              and q.method == "POST"]
    assert sorted(models) == ["llama3:8b", "qwen:0.5b"]
    assert [t.label for t in ev.targets] == ["ollama:llama3:8b", "ollama:qwen:0.5b"]


def test_export_writes_one_batch_file_per_target_and_results_read_back(srv, tmp_path):
    srv.reset()
    providers = (prov("a", srv.base_url("prompt", case="exp"), 1,
                      "models: [{name: ma, default: true}]")
                 + prov("b", srv.base_url("prompt", case="exp2"), 2))
    rows = [{"q": "Paris", "answer": "Paris"}, {"q": "Lyon", "answer": "Paris"}]
    with make_router(providers) as r:
        out = evaluate(rows, "{q}", ["a", "b:mb"], "exact:answer", export=tmp_path,
                       router=r, progress=False)
        assert srv.count(path_suffix="chat/completions") == 0
        manifest = json.loads((tmp_path / "evaluation.json").read_text())
        assert [t["requests"] for t in manifest["targets"]] == ["a.jsonl", "b_mb.jsonl"]
        lines = [json.loads(x) for x in (tmp_path / "b_mb.jsonl").read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == ["row-0", "row-1"]
        assert {x["body"]["model"] for x in lines} == {"mb"}
        assert "a.jsonl" in repr(out) and "results=DIR" in repr(out)
        # what vLLM's run-batch writes: an answer per line, here the prompt echoed
        for name, model in (("a", "ma"), ("b_mb", "mb")):
            reqs = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text()
                    .splitlines()]
            (tmp_path / f"{name}.results.jsonl").write_text("".join(json.dumps({
                "id": "x", "custom_id": q["custom_id"], "error": None,
                "response": {"status_code": 200, "body": {
                    "model": model, "choices": [{"message": {
                        "role": "assistant",
                        "content": q["body"]["messages"][-1]["content"]}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1}}}}) + "\n"
                for q in reqs))
        back = evaluate(rows, "{q}", ["a", "b:mb"], "exact:answer", results=tmp_path,
                        router=r, progress=False)
        live = evaluate(rows, "{q}", ["a", "b:mb"], "exact:answer", router=r,
                        progress=False)
    assert srv.count(path_suffix="chat/completions") == 4  # the live run only
    cols = ["row", "target", "provider", "text", "score", "error"]
    pd.testing.assert_frame_equal(back.to_pandas()[cols], live.to_pandas()[cols])
    assert back.to_pandas().model.tolist() == ["ma", "mb", "ma", "mb"]
    (tmp_path / "b_mb.results.jsonl").unlink()
    partial = evaluate(rows, "{q}", ["a", "b:mb"], "exact:answer", results=tmp_path,
                       router=r, progress=False)
    assert [a.error for a in partial.of("b:mb")] == ["no results file b_mb.results.jsonl"] * 2


def test_interrupt_keeps_the_finished_answers(srv):
    rows = [{"t": "quick"}] * 2 + [{"t": "SLOW"}] * 2
    with make_router(prov("a", srv.base_url("prompt", slow=30, case="intr"), 1)) as r:
        main = threading.main_thread().ident
        timer = threading.Timer(1.0, lambda: _interrupt(main))
        timer.start()
        with pytest.raises(EvalInterrupted) as info:
            evaluate(rows, "{t}", ["a"], "regex:quick", concurrency=4, router=r,
                     progress=False)
        ev = info.value.result
        assert ev.interrupted and [a.score for a in ev.answers[:2]] == [1.0, 1.0]
        assert all(not a.asked for a in ev.answers[2:])
        assert ev.summary().loc["a", "rows"] == 2  # the rows never asked are not counted
        assert "2 of 4 answers kept" in str(info.value)
        assert r.complete("after").ok


def _interrupt(thread_id):
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(KeyboardInterrupt))


def test_figures_are_plain_arithmetic():
    mean, low, high = interval([1.0] * 8 + [0.0] * 2)
    assert mean == 0.8 and low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)  # Wilson's interval
    mean, low, high = interval([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and low == pytest.approx(0.7 - 1.96 * 0.2 / 3 ** 0.5,
                                                               abs=1e-3)
    assert interval([]) == (None, None, None)
    assert frontier([(0.0, 0.5), (1.0, 0.9), (2.0, 0.8), (0.0, 0.4)]) == [0, 1]
    assert normalise("  The  Answer. ") == "the answer"


def test_with_a_schema_exact_compares_the_datas_field_and_the_index_is_kept(srv):
    answers = json.dumps(['{"answer": "Paris", "why": "it is"}',
                          '{"answer": "Lyon", "why": "guess"}'])
    schema = {"type": "object", "properties": {"answer": {"type": "string"},
                                               "why": {"type": "string"}},
              "required": ["answer"]}
    df = pd.DataFrame({"q": ["France", "Italy"], "answer": ["paris", "Rome"]},
                      index=pd.Index(["fr", "it"], name="code"))
    with make_router(prov("s", srv.base_url("sequence", texts=answers, case="schema"),
                          1)) as r:
        ev = evaluate(df, "Capital of {q}?", ["s"], "exact:answer", schema=schema,
                      concurrency=1, router=r, progress=False)
    table = ev.to_pandas()
    assert table.row.tolist() == ["fr", "it"] and table.score.tolist() == [1.0, 0.0]
    assert table.data.tolist() == [{"answer": "Paris", "why": "it is"},
                                   {"answer": "Lyon", "why": "guess"}]


def test_the_notebook_view_escapes_and_draws_one_panel_without_a_score(srv):
    from timmy_magic.notebook.display.eval_view import evaluation_html

    with make_router(prov("a", srv.base_url("ok", text="x", case="view"), 1)) as r:
        ev = evaluate([{"q": "<b>"}], "{q}", ["a:<script>m</script>"], router=r,
                      progress=False)
    page = evaluation_html(ev)
    assert page.count("<svg") == 1 and "latency p50" in page  # cost against latency
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "score [95%]" in page and "<td>-</td>" in page  # not scored: no score shown


def test_no_rows_is_an_empty_evaluation_that_sends_nothing(srv):
    srv.reset()
    with make_router(prov("a", srv.base_url("prompt", case="none"), 1)) as r:
        ev = evaluate([], "{q}", ["a"], "exact:answer", router=r, progress=False)
    assert len(ev) == 0 and srv.count(path_suffix="chat/completions") == 0
    assert ev.summary().loc["a", "rows"] == 0 and list(ev.to_pandas().columns) == list(COLUMNS)
    assert ev.cascade().order == [] and "no target met the bar" in ev.cascade().yaml


def test_the_advice_in_markdown_cannot_be_broken_out_of(srv):
    with make_router(prov("a", srv.base_url("ok", text="x", case="md"), 1)) as r:
        ev = evaluate([{"q": "x"}], "{q}", [("a", "m```\n# injected")], router=r,
                      progress=False)
    shown = ev.cascade()._repr_markdown_()
    assert shown.startswith("<pre") and shown.endswith("</code></pre>")
    assert "\n# injected" not in shown and "\n# injected" not in ev.cascade().yaml
