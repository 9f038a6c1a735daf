"""The metric arithmetic, exactly, on synthetic timelines with hand-computed values.

Definitions: vLLM's benchmark_serving ``calculate_metrics`` (see timmy_magic.bench.metrics).
"""

from __future__ import annotations

import math

import pytest

from timmy_magic.bench.metrics import (
    Dist,
    Timeline,
    max_overlap,
    peak_streams,
    span,
    timeline_stats,
)
from timmy_magic.bench.runner import _timeline
from timmy_magic.model.chat import Result, RouteTrace, Timings, Usage
from timmy_magic.model.tokens import estimate_tokens

approx = pytest.approx

# A: 3 tokens in 3 chunks. TTFT 100 ms, E2E 300 ms, TPOT (300-100)/2 = 100 ms, ITL 50, 100.
A = Timeline(0.0, (0.10, 0.15, 0.25), 0.30, input_tokens=10, output_tokens=3, model="m")
# B: 5 tokens in 2 chunks (a server that batches). TTFT 200, E2E 400, TPOT 200/4 = 50, ITL 50.
B = Timeline(0.05, (0.25, 0.30), 0.45, input_tokens=20, output_tokens=5, model="m")
# C: one output token: TTFT 100, E2E 120, no TPOT, no ITL.
C = Timeline(0.10, (0.20,), 0.22, input_tokens=5, output_tokens=1, model="other")
# D: failed before answering. E: broke after two chunks.
D = Timeline(0.20, (), 0.50, status="error", error="HTTP 500", attempts=3)
E = Timeline(0.00, (0.10, 0.20), 0.60, input_tokens=7, output_tokens=2, status="incomplete",
             error="connection dropped", model="m")


def test_per_request_values() -> None:
    assert A.ttft == approx(0.10) and A.e2e == approx(0.30)
    assert A.tpot == approx(0.10)
    assert A.itls == approx([0.05, 0.10])
    assert B.tpot == approx(0.05)  # tokens, not chunks, divide the decode time
    assert C.tpot is None and C.itls == []
    assert D.ttft is None and D.tpot is None and not D.completed
    assert not E.completed


def test_summary_of_a_mixed_run() -> None:
    s = timeline_stats([A, B, C, D, E])
    assert (s.requests, s.completed, s.errors, s.incomplete, s.cancelled) == (5, 3, 1, 1, 0)
    assert s.retries == 2
    assert s.duration_s == approx(0.6)  # span: first start 0.0 to last end 0.6
    # TTFT over completed only: 100, 200, 100 ms
    assert (s.ttft.mean, s.ttft.p50, s.ttft.p95, s.ttft.p99) == approx(
        (400 / 3, 100.0, 190.0, 198.0))
    # E2E: 300, 400, 120 ms
    assert (s.e2e.mean, s.e2e.p50, s.e2e.p95, s.e2e.p99) == approx(
        (820 / 3, 300.0, 390.0, 398.0))
    # TPOT: A 100, B 50 (C has one token: excluded)
    assert (s.tpot.mean, s.tpot.p50, s.tpot.p95, s.tpot.p99) == approx((75.0, 75.0, 97.5, 99.5))
    # ITL pooled: 50, 100 (A) and 50 (B)
    assert (s.itl.mean, s.itl.p50, s.itl.p95, s.itl.p99) == approx((200 / 3, 50.0, 95.0, 99.0))
    # throughput over the run: completed requests and their tokens only
    assert s.output_tokens == 9 and s.input_tokens == 35 and s.chunks == 6
    assert s.requests_per_s == approx(3 / 0.6)
    assert s.output_tok_s == approx(9 / 0.6)
    assert s.total_tok_s == approx(44 / 0.6)
    assert s.first_error == "HTTP 500"
    assert s.model == "m"
    assert not s.tokens_estimated


def test_wall_duration_overrides_the_span() -> None:
    s = timeline_stats([A, B, C], duration_s=1.5)
    assert s.duration_s == 1.5
    assert s.requests_per_s == approx(2.0) and s.output_tok_s == approx(6.0)


def test_one_token_answers_have_no_tpot_or_itl() -> None:
    s = timeline_stats([C, Timeline(0.0, (0.05,), 0.07, output_tokens=1)])
    assert s.completed == 2
    assert s.tpot == Dist() and s.itl == Dist()
    assert s.ttft.mean == approx(75.0) and s.ttft.p50 == approx(75.0)


def test_only_errors() -> None:
    s = timeline_stats([D, Timeline(0.0, (), 0.1, status="error", error="refused")])
    assert (s.completed, s.errors) == (0, 2)
    assert s.ttft == s.e2e == s.tpot == s.itl == Dist()
    assert s.requests_per_s == 0.0 and s.output_tok_s == 0.0
    assert s.duration_s == approx(0.5)


def test_nothing_at_all() -> None:
    s = timeline_stats([])
    assert s.requests == 0 and s.duration_s == 0.0
    assert s.requests_per_s is None and s.output_tok_s is None and s.total_tok_s is None


def test_cancelled_requests_are_counted_not_measured() -> None:
    cut = Timeline(0.0, (0.1,), 0.2, status="cancelled", error="interrupted")
    s = timeline_stats([A, cut])
    assert (s.requests, s.completed, s.cancelled) == (2, 1, 1)
    assert s.ttft.p50 == approx(100.0)


def test_single_value_percentiles_are_that_value() -> None:
    d = Dist.of_seconds([0.25])
    assert (d.mean, d.p50, d.p95, d.p99) == approx((250.0, 250.0, 250.0, 250.0))


def test_tpot_equals_mean_itl_when_one_token_per_chunk_and_end_at_last_chunk() -> None:
    t = Timeline(1.0, (1.2, 1.23, 1.29, 1.30), 1.30, output_tokens=4)
    assert t.tpot == approx(sum(t.itls) / len(t.itls))


def test_estimated_tokens_are_flagged_in_the_summary() -> None:
    est = Timeline(0.0, (0.1, 0.2), 0.3, input_tokens=4, output_tokens=2, estimated=True)
    assert timeline_stats([A, est]).tokens_estimated
    # an estimate on a failed request does not taint the completed ones
    failed = Timeline(0.0, (0.1,), 0.3, estimated=True, status="incomplete", error="x")
    assert not timeline_stats([A, failed]).tokens_estimated


def _result(usage: Usage, error: str | None = None) -> Result:
    return Result("abc", "p", "served", usage, Timings(0.1, 0.3, None), RouteTrace(),
                  error=error)


def test_token_counts_from_server_usage() -> None:
    t = _timeline(0.0, [0.1, 0.2], 0.3, _result(Usage(12, 7)), 1, estimated_input=10)
    assert (t.input_tokens, t.output_tokens, t.estimated) == (12, 7, False)
    assert t.status == "ok" and t.model == "served"


def test_no_usage_means_estimated_counts() -> None:
    # what the router hands back when the server sent no usage: chunks counted, flagged
    t = _timeline(0.0, [0.1, 0.2, 0.25], 0.3, _result(Usage(None, 3, estimated=True)), 1,
                  estimated_input=estimate_tokens("x" * 41))
    assert t.output_tokens == 3 and t.input_tokens == math.ceil(41 / 4) and t.estimated


def test_a_broken_stream_is_incomplete_with_its_error() -> None:
    t = _timeline(0.0, [0.1], 0.3, _result(Usage(None, 1, estimated=True), "dropped"), 2, 8)
    assert t.status == "incomplete" and t.error == "dropped" and t.attempts == 2


def test_span_and_overlap() -> None:
    assert span([A, B]) == approx(0.45)
    assert span([Timeline(0.0)]) == 0.0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # touching is not overlapping
    assert max_overlap([(0, 10), (1, 2), (1.5, 3), (2.5, 4)]) == 3
    assert max_overlap([]) == 0
    # A streams 0.10-0.30, B 0.25-0.45, C 0.20-0.22: A with C, then A with B; never all three
    assert peak_streams([A, B, C]) == 2
    assert peak_streams([D]) == 0


def test_fields_are_flat_and_named_in_ms() -> None:
    f = timeline_stats([A, B]).fields()
    for key in ("ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "itl_ms_p99", "e2e_ms_p50",
                "output_tok_s", "requests_per_s", "completed", "errors", "total_tok_s"):
        assert key in f
    assert f["ttft_ms_p50"] == approx(150.0)
