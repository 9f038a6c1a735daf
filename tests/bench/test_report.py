"""Rendering and export of benchmark results (pure: built from synthetic timelines)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from timmy_magic.bench.metrics import Timeline
from timmy_magic.bench.report import BenchResult, Cell, best_cells

REQUIRED = ("provider", "model", "concurrency", "completed", "errors", "ttft_ms_p50",
            "ttft_ms_p95", "tpot_ms_p50", "itl_ms_p99", "e2e_ms_p50", "output_tok_s",
            "requests_per_s")


def tl(start: float, ttft: float, gap: float, tokens: int, **kw: object) -> Timeline:
    chunks = tuple(start + ttft + i * gap for i in range(tokens))
    return Timeline(start, chunks, chunks[-1], input_tokens=10, output_tokens=tokens,
                    model="m", **kw)  # type: ignore[arg-type]


def cell(provider: str, c: int, timelines: list[Timeline]) -> Cell:
    end = max(t.end for t in timelines if t.end is not None)
    return Cell(provider, c, len(timelines), "hint", list(timelines), 0.0, end, 0.0, 0.004)


def sample() -> BenchResult:
    cells = [
        cell("fast", 1, [tl(0, 0.05, 0.01, 8), tl(0.2, 0.05, 0.01, 8)]),
        cell("slow", 1, [tl(0, 0.02, 0.03, 8), tl(0.3, 0.02, 0.03, 8),
                         Timeline(0.5, (), 0.6, status="error", error="HTTP 500")]),
        cell("fast", 4, [tl(0, 0.2, 0.02, 8), tl(0, 0.25, 0.02, 8)]),
        cell("slow", 4, [tl(0, 0.3, 0.05, 8, estimated=True), tl(0, 0.3, 0.05, 8)]),
    ]
    warm = [("fast", 0, tl(0, 0.9, 0.01, 8)), ("slow", 0, Timeline(0, (), 0.1,
                                                                   status="error",
                                                                   error="cold"))]
    settings = {"providers": ["fast", "slow"], "concurrency": [1, 4], "n": 2,
                "max_tokens": 8, "prompts": ["hello"], "warmup": 1, "model": None,
                "temperature": None}
    machine = {"cpu": "TestCPU", "cores": 2, "system": "Linux 6", "arch": "x86_64",
               "python": "3.11", "timmy_magic": "0.1.0", "started": "2026-01-01T00:00:00"}
    return BenchResult.build(settings, cells, warm, machine, False, ["a note"])


def test_records_have_the_required_keys_one_per_provider_and_level() -> None:
    r = sample()
    assert [(x["provider"], x["concurrency"]) for x in r.records] == [
        ("fast", 1), ("slow", 1), ("fast", 4), ("slow", 4)]
    for rec in r.records:
        assert set(REQUIRED) <= set(rec)
    slow1 = r.records[1]
    assert (slow1["completed"], slow1["errors"], slow1["requests"]) == (2, 1, 3)
    assert slow1["first_error"] == "HTTP 500"
    assert r.records[0]["model"] == "m"
    assert r.records[0]["client_cpu_ms_per_chunk"] == pytest.approx(4 / 16)
    assert r.warmup[0]["ttft_ms"] == pytest.approx(900.0)
    assert r.warmup[1]["status"] == "error" and r.warmup[1]["error"] == "cold"


def test_best_value_per_column_among_providers_at_the_same_level() -> None:
    best = best_cells(sample().records)
    # c=1: slow has the lower TTFT (20 vs 50 ms); fast the lower TPOT/ITL and more tok/s
    assert (1, "ttft_ms_p50") in best and (0, "ttft_ms_p50") not in best
    assert (0, "tpot_ms_p50") in best and (0, "output_tok_s") in best
    # c=4: fast wins TTFT; nothing crosses levels
    assert (2, "ttft_ms_p50") in best and (3, "ttft_ms_p50") not in best
    assert not any(key in ("provider", "model", "errors") for _, key in best)


def test_no_highlight_with_a_single_provider_or_no_completed_rows() -> None:
    one = [r for r in sample().records if r["provider"] == "fast"]
    assert best_cells(one) == set()
    failed = dict(sample().records[1], completed=0, ttft_ms_p50=1.0)
    assert (1, "ttft_ms_p50") not in best_cells([sample().records[0], failed])


def test_text_table_marks_best_estimates_and_has_a_footer() -> None:
    text = str(sample())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["provider", "model", "conc"]
    assert re.search(r"^slow\s+m\s+1\s+2/3\s+1\s+0\s+20\.0\*", text, re.MULTILINE)
    assert "~" in lines[5]  # slow c=4 has an estimated token count: token columns say so
    assert "warm-up (not in the table): fast#1 TTFT 900.0 ms" in text
    assert "slow#1" in text and "error: cold" in text
    assert "machine: TestCPU (2 cores)" in text
    assert "models: fast=m, slow=m" in text
    assert "max_tokens=8" in text and "concurrency 1, 4" in text
    assert "one token per chunk" in text
    assert "~ token counts estimated" in text
    assert "slow c=1: 1 errors" in text and "HTTP 500" in text
    assert "a note" in text and "* best among providers" in text
    assert repr(sample()) == text


def test_html_table_highlights_and_escapes() -> None:
    r = sample()
    r.records[0]["provider"] = "<b>fast</b>"
    page = r._repr_html_()
    assert "<table class='tm-bench'>" in page
    assert "&lt;b&gt;fast&lt;/b&gt;" in page and "<b>fast</b>" not in page
    assert page.count("class='best'") == len(best_cells(r.records))
    assert "class='bad'" in page  # slow c=1 has an error
    assert "machine: TestCPU" in page
    assert "data:image/png;base64," in page  # two levels: the chart is inline


def test_a_single_level_is_charted_as_a_bar_per_provider() -> None:
    r = sample()
    r.records = [x for x in r.records if x["concurrency"] == 1]
    assert "data:image/png;base64," in r._repr_html_()  # %llm bench without -c: a chart too
    fig = r.chart()
    assert fig is not None
    tput, ttft = fig.axes
    assert [t.get_text() for t in tput.get_xticklabels()] == ["fast", "slow"]
    assert [p.get_height() for p in tput.patches] == pytest.approx(
        [x["output_tok_s"] for x in r.records])
    assert [p.get_height() for p in ttft.patches] == pytest.approx(
        [x["ttft_ms_p50"] for x in r.records])
    assert ttft.get_xlabel() == "concurrency 1" and tput.get_ylim()[0] == 0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fast", "slow"]


def test_csv_and_json_round_trip(tmp_path: pytest.TempPathFactory) -> None:
    r = sample()
    path = tmp_path / "out.csv"  # type: ignore[operator]
    text = r.to_csv(path)
    assert path.read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    assert list(rows[0])[:3] == ["provider", "model", "concurrency"]
    assert set(REQUIRED) <= set(rows[0])
    assert float(rows[0]["ttft_ms_p50"]) == pytest.approx(r.records[0]["ttft_ms_p50"])
    data = json.loads(r.to_json(tmp_path / "out.json"))  # type: ignore[operator]
    assert data["records"] == r.records
    assert data["warmup"] == r.warmup
    assert data["settings"]["max_tokens"] == 8 and data["interrupted"] is False


def test_to_pandas() -> None:
    df = sample().to_pandas()
    assert df.shape[0] == 4
    assert list(df.columns[:3]) == ["provider", "model", "concurrency"]
    assert df.loc[df.provider == "slow", "errors"].tolist() == [1, 0]


def test_chart_has_throughput_and_ttft_per_provider() -> None:
    fig = sample().chart()
    assert fig is not None
    tput, ttft = fig.axes
    assert [ln.get_label() for ln in tput.lines] == ["fast", "slow"]
    assert list(tput.lines[0].get_xdata()) == [1, 4]
    assert list(ttft.lines[1].get_ydata()) == pytest.approx(
        [sample().records[1]["ttft_ms_p50"], sample().records[3]["ttft_ms_p50"]])
    assert "TTFT" in ttft.get_title() and "tokens/s" in tput.get_title()


def test_chart_legend_is_above_the_charts_not_on_the_data() -> None:
    fig = sample().chart()
    assert fig is not None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fast", "slow"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    fig.canvas.draw()  # constrained layout places it: above the top of both axes
    box = legend.get_window_extent()
    assert all(box.y0 >= ax.get_window_extent().y1 for ax in fig.axes)


def test_empty_result_renders() -> None:
    r = BenchResult([], interrupted=True, notes=["interrupted"])
    assert "(no finished runs)" in str(r)
    assert "(no finished runs)" in r._repr_html_()
    assert r.to_csv().splitlines()[0] == "provider,model,concurrency"


def test_chart_ticks_are_the_levels_and_axes_start_at_zero() -> None:
    from timmy_magic.bench.report import make_chart

    fig = make_chart(sample().records)
    assert fig is not None
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4"]  # not 2⁰, 2²
        assert ax.get_ylim()[0] == 0
