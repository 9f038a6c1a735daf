"""``timmy_magic.map`` against loopback servers the tests control: input order kept while
answers finish out of order, at most ``concurrency`` in flight, an error row that stops
nothing, DataFrames in and out, schemas per row, failover per row, an interrupt that
keeps the finished rows and cleans up, batch JSONL export and reading results back."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pandas as pd
import pytest
from pydantic import BaseModel

from tests.support.faultserver import FaultServer
from timmy_magic import batch
from timmy_magic.batch import (
    MapError,
    MapInterrupted,
    MapResult,
    map_results,
    progress_line,
)
from timmy_magic.model.chat import ChatRequest, Result, RouteTrace, Timings, Usage
from timmy_magic.model.errors import TimmyError
from timmy_magic.notebook.api import map

from .test_router_faults import make_router, prov


@pytest.fixture(scope="module")
def srv():
    with FaultServer() as s:
        yield s


def test_rows_keep_their_order_while_answers_finish_out_of_order(srv):
    rows = [{"n": n, "word": "x" * n} for n in range(1, 13)]
    with make_router(prov("a", srv.base_url("prompt", delay=0.05, case="order"), 1)) as r:
        res = map("{n}: {word}", rows, router=r, concurrency=6, progress=False)
    assert isinstance(res, MapResult) and res.ok and len(res) == 12
    assert res.data == [f"{n}: {'x' * n}" for n in range(1, 13)]
    arrival = [json.loads(q.body)["messages"][-1]["content"] for q in srv.requests
               if "case=order" in q.path and q.method == "POST"]
    assert sorted(arrival) == sorted(res.data)  # every row asked exactly once


def test_at_most_concurrency_requests_are_in_flight(srv):
    srv.reset()
    rows = [{"i": i} for i in range(10)]
    url = srv.base_url("ok", tokens=4, delay=0.05, case="conc")
    with make_router(prov("a", url, 1)) as r:
        res = map("row {i}", rows, router=r, concurrency=3, progress=False)
    assert res.ok and srv.peak_in_flight == 3


def test_a_failed_row_is_kept_as_an_error_and_the_others_answer(srv):
    rows = [{"t": "fine one"}, {"t": "FAIL me"}, {"t": "fine two"}]
    with make_router(prov("a", srv.base_url("prompt", case="err"), 1)) as r:
        res = map("{t}", rows, router=r, progress=False)
    assert not res.ok and res.data == ["fine one", None, "fine two"]
    [err] = res.errors
    assert err.index == 1 and err.row == {"t": "FAIL me"} and "400" in err.error
    assert "\n" not in err.error and res.results[1].trace.attempts  # the route is kept


def test_each_row_fails_over_on_its_own(srv):
    providers = (prov("down", srv.base_url("status", code=503, case="fo"), 1)
                 + prov("up", srv.base_url("prompt", case="fo2"), 2))
    with make_router(providers, "  max_retries_per_provider: 0") as r:
        res = map("q{i}", [{"i": i} for i in range(4)], router=r, progress=False)
    assert res.ok and {x.provider for x in res.results} == {"up"}


def test_dataframe_in_and_out_with_a_schema(srv):
    class Item(BaseModel):
        name: str
        qty: int

    df = pd.DataFrame({"name": ["pen", "cup"], "qty": [2, 5]},
                      index=pd.Index(["r1", "r2"], name="id"))
    answers = json.dumps(['{"name": "pen", "qty": 2}', '{"name": "cup", "qty": 5}'])
    url = srv.base_url("sequence", texts=answers, case="df")
    with make_router(prov("a", url, 1)) as r:
        res = map("{name} x{qty}", df, schema=Item, router=r, concurrency=1, progress=False)
    assert res.ok and res.data == [Item(name="pen", qty=2), Item(name="cup", qty=5)]
    out = res.to_pandas()
    assert list(out.index) == ["r1", "r2"] and out.index.name == "id"
    # input columns first; the data's fields clash with them, so they are prefixed
    assert list(out.columns[:4]) == ["name", "qty", "answer_name", "answer_qty"]
    assert out["answer_qty"].tolist() == [2, 5]
    assert out["provider"].tolist() == ["a", "a"] and out["error"].isna().all()


def test_rows_may_be_objects_and_the_whole_row_is_row(srv):
    @dataclass
    class Pet:
        name: str
        kind: str

    with make_router(prov("a", srv.base_url("prompt", case="obj"), 1)) as r:
        res = map("{name} the {kind} ({row.kind})", [Pet("Rex", "dog")], router=r,
                  progress=False)
    assert res.data == ["Rex the dog (dog)"]


def test_a_row_that_cannot_fill_the_template_is_an_error_row(srv):
    rows = [{"a": "x", "b": "y"}, {"a": "only a"}]
    with make_router(prov("a", srv.base_url("prompt", case="fill"), 1)) as r:
        res = map("{a} {b}", rows, router=r, progress=False)
    assert res.data[0] == "x y" and res.data[1] is None
    assert res.errors[0].error == "{b}: this row has no field 'b' (its fields: a)"


@pytest.mark.parametrize("template, rows, why", [
    ("{nope}", [{"a": 1}], "{nope} in the template is not a field of the rows (fields: a"),
    ("", [{"a": 1}], "the template is empty"),
    ("{a}", "abc", "not one str"),
    ("{a}", 42, "not int"),
])
def test_a_bad_call_is_one_line_before_anything_is_sent(srv, template, rows, why):
    srv.reset()
    with (make_router(prov("a", srv.base_url("prompt", case="bad"), 1)) as r,
          pytest.raises(MapError) as info):
        map(template, rows, router=r, progress=False)
    assert why in str(info.value) and "\n" not in str(info.value)
    assert srv.count(path_suffix="chat/completions") == 0


@pytest.mark.parametrize("kw, why", [
    ({"concurrency": 0}, "concurrency"), ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": float("nan")}, "temperature"),
])
def test_bad_options_are_one_line(srv, kw, why):
    with (make_router(prov("a", srv.base_url("prompt"), 1)) as r,
          pytest.raises(MapError, match=why)):
        map("{a}", [{"a": 1}], router=r, progress=False, **kw)


def test_interrupt_keeps_finished_rows_and_cancels_the_rest(srv):
    rows = [{"t": "quick"}] * 3 + [{"t": "SLOW"}] * 3
    with make_router(prov("a", srv.base_url("prompt", slow=30, case="intr"), 1)) as r:
        main = threading.main_thread().ident
        timer = threading.Timer(1.0, lambda: _interrupt(main))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(MapInterrupted) as info:
            map("{t}", rows, router=r, concurrency=6, progress=False)
        took = time.monotonic() - t0
        res = info.value.result
        assert took < 10  # not the 30 s the slow rows would take
        assert res.interrupted and res.data[:3] == ["quick"] * 3
        assert all(x.error for x in res.results[3:])
        assert "3 of 6 rows answered" in str(info.value)
        # the cancelled requests settled: nothing is left outstanding on the provider
        assert all(ep.outstanding == 0 for ep in r.provider("a").endpoints)
        assert r.complete("after").ok  # the router still works


def _interrupt(thread_id: int | None) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(KeyboardInterrupt))


def test_export_writes_openai_batch_jsonl_and_sends_nothing(srv, tmp_path):
    class Tag(BaseModel):
        tag: str

    srv.reset()
    rows = [{"x": "a"}, {"x": "b"}, {"y": "no x"}]
    with make_router(prov("a", srv.base_url("prompt", case="exp"), 1)) as r:
        out = map("tag {x}", rows, schema=Tag, model="m1", system="Be brief.",
                  max_tokens=20, export=tmp_path / "req.jsonl", router=r, progress=False)
    assert srv.count(path_suffix="chat/completions") == 0
    lines = [json.loads(x) for x in (tmp_path / "req.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["row-0", "row-1"]
    first = lines[0]
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    body = first["body"]
    assert body["model"] == "m1" and body["max_tokens"] == 20
    assert body["messages"][-1] == {"role": "user", "content": "tag a"}
    assert body["messages"][0]["role"] == "system" and "Be brief." in \
        body["messages"][0]["content"] and '"tag"' in body["messages"][0]["content"]
    assert body["response_format"]["json_schema"]["schema"] == Tag.model_json_schema()
    assert out.rows == 2 and [e.index for e in out.skipped] == [2]
    assert "vllm run-batch -i req.jsonl" in repr(out)


def test_export_without_a_model_says_which_to_pass(srv, tmp_path):
    with (make_router(prov("a", srv.base_url("prompt"), 1)) as r,
          pytest.raises(MapError, match="export needs the model")):
        map("{x}", [{"x": 1}], export=tmp_path / "r.jsonl", router=r)


def test_map_results_reads_batch_output_back_in_row_order(tmp_path):
    class Tag(BaseModel):
        tag: str

    def line(i, content=None, error=None, status=200):
        body = {"id": "c", "object": "chat.completion", "model": "m1",
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": content}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        return json.dumps({"id": f"b{i}", "custom_id": f"row-{i}",
                           "response": None if error else {"status_code": status,
                                                           "body": body},
                           "error": error})

    path = tmp_path / "results.jsonl"
    path.write_text("\n".join([line(2, '{"tag": "c"}'), line(0, '{"tag": "a"}'),
                               line(3, "not json"),
                               line(4, error={"code": "x", "message": "quota"})]) + "\n")
    rows = [{"x": c} for c in "abcde"] + [{"x": "f"}]
    res = map_results(path, rows, schema=Tag)
    assert res.data[:3] == [Tag(tag="a"), None, Tag(tag="c")]
    errs = {e.index: e.error for e in res.errors}
    assert "no result" in errs[1] and errs[3].startswith("invalid JSON")
    assert errs[4] == "batch error: quota" and "no result" in errs[5]
    assert res.results[0].usage.output_tokens == 3 and res.results[0].model == "m1"
    frame = res.to_pandas()
    assert frame["x"].tolist() == list("abcdef") and frame.loc[0, "tag"] == "a"
    path.write_text("garbage\n")
    with pytest.raises(MapError, match="line 1"):
        map_results(path)


def test_progress_line_reads_as_words():
    assert progress_line(0, 10, 0, 0, 0.0) == "0/10 rows"
    assert progress_line(4, 10, 1, 400, 2.0) == "4/10 rows · 1 error · 200 tok/s · ETA 0:03"
    assert progress_line(10, 10, 2, 0, 5.25, final=True) == "10/10 rows · 2 errors · 5.2s"


def test_summary_and_markdown_name_rows_errors_and_providers(srv):
    rows = [{"t": "one"}, {"t": "FAIL"}, {"t": "<b>three|</b>"}]
    with make_router(prov("a", srv.base_url("prompt", case="sum"), 1)) as r:
        res = map("{t}", rows, router=r, progress=False)
    assert res.summary().startswith("3 rows: 2 answered · 1 error · a 2 · ")
    shown = res._repr_markdown_()
    assert "<b>" not in shown and "\\|" in shown  # model text is escaped, not markup


def test_rows_whose_iteration_raises_are_one_line_and_send_nothing(srv):
    def rows():
        yield {"a": 1}
        raise OSError("disk went away")

    with (make_router(prov("a", srv.base_url("prompt"), 1)) as r,
          pytest.raises(MapError) as info):
        map("{a}", rows(), router=r, progress=False)
    assert str(info.value) == ("map: reading the rows raised OSError: disk went away "
                               "(nothing was sent)")


def test_no_rows_is_an_empty_result_and_sends_nothing(srv):
    with make_router(prov("a", srv.base_url("prompt"), 1)) as r:
        res = map("{a}", [], router=r)
    assert len(res) == 0 and res.ok and res.data == [] and res.summary().startswith("0 rows")


def test_a_key_in_a_row_is_masked_before_it_leaves_and_in_the_export(srv, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdef123456")
    rows = [{"note": "call with tok-abcdef123456 please"}]
    with make_router(prov("a", srv.base_url("prompt", case="mask"), 1)) as r:
        res = map("{note}", rows, router=r, system="key tok-abcdef123456", progress=False)
        map("{note}", rows, model="m", export=tmp_path / "q.jsonl", router=r)
    sent = [q.body.decode() for q in srv.requests if "case=mask" in q.path]
    assert sent and not any("abcdef123456" in b for b in sent)
    assert res.data == ["call with *** please"]
    assert "abcdef123456" not in (tmp_path / "q.jsonl").read_text()


# ---------------------------------------------------------------- batch without a notebook


@dataclass
class Shown:
    """A progress display that keeps what it was told."""

    calls: list[tuple[str, int, str]]

    def start(self, total: int) -> None:
        self.calls.append(("start", total, ""))

    def advance(self, done: int, line: str) -> None:
        self.calls.append(("advance", done, line))

    def finish(self, done: int, line: str) -> None:
        self.calls.append(("finish", done, line))


class Recorded:
    """An answer cache over a dict, keyed by the prompt."""

    def __init__(self, answers: dict[str, Result]) -> None:
        self.answers = answers
        self.recorded: list[str] = []

    def lookup(self, req: ChatRequest) -> Result | None:
        return self.answers.get(req.messages[-1].text)

    def record(self, req: ChatRequest, result: Result) -> None:
        self.recorded.append(req.messages[-1].text)


def test_batch_runs_over_a_router_with_the_cache_and_progress_passed_in(srv):
    done = Result("from the cache", "earlier", None, Usage(), Timings(None, 0.0, None),
                  RouteTrace(), cached=True)
    cache = Recorded({"say b": done})
    shown = Shown([])
    job = batch.plan("say {w}", [{"w": w} for w in "abc"], concurrency=2)
    with make_router(prov("a", srv.base_url("prompt", case="pure"), 1)) as r:
        res = batch.run(r, job, cache=cache, progress=shown)
    assert res.data == ["say a", "from the cache", "say c"] and not res.interrupted
    assert sorted(cache.recorded) == ["say a", "say c"]  # live answers kept, the hit not
    assert sum("case=pure" in q.path for q in srv.requests if q.method == "POST") == 2
    assert shown.calls[0] == ("start", 3, "") and shown.calls[-1][:2] == ("finish", 3)
    assert shown.calls[-1][2].startswith("3/3 rows")
    assert all(kind == "advance" for kind, *_ in shown.calls[1:-1])


def test_a_replay_miss_from_the_cache_is_an_error_row_that_sends_nothing(srv):
    class Replay(Recorded):
        def lookup(self, req: ChatRequest) -> Result | None:
            raise TimmyError("replay: no recorded answer\nmore words")

    job = batch.plan("say {w}", [{"w": "x"}])
    with make_router(prov("a", srv.base_url("prompt", case="miss"), 1)) as r:
        res = batch.run(r, job, cache=Replay({}))
    assert res.errors[0].error == "replay: no recorded answer"
    assert not any("case=miss" in q.path for q in srv.requests)


def test_plain_python_map_draws_its_progress_as_one_terminal_line(srv, capsys):
    with make_router(prov("a", srv.base_url("prompt", case="term"), 1)) as r:
        res = map("{i}", [{"i": i} for i in range(3)], router=r)
    assert res.ok
    err = capsys.readouterr().err
    assert err.startswith("\rmap: 0/3 rows") and err.endswith("\033[K\n")
    assert "\rmap: 3/3 rows" in err and err.count("\n") == 1


def test_map_without_a_router_or_the_extension_says_how_to_get_one():
    with pytest.raises(MapError, match="no router: run %load_ext timmy_magic"):
        map("{a}", [{"a": 1}])


def test_the_batch_and_compare_features_import_no_notebook():
    code = ("import sys, timmy_magic.batch, timmy_magic.compare\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'IPython', 'ipywidgets', 'traitlets', 'ipykernel'}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('timmy_magic.notebook')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]
