"""Pure parts of the panel: coalescing with an injected clock, badge tones and HTML."""

from __future__ import annotations

import re
import typing

import pytest

from timmy_magic.model.chat import EndpointHealth, HealthReport, HealthState
from timmy_magic.notebook.display.panel_html import (
    AUTO,
    AUTO_VALUE,
    Coalescer,
    badge_html,
    budget_percent,
    detail_lines,
    gate_html,
    pin_options,
    row_html,
    table_html,
    tone_of,
)
from timmy_magic.routing.metrics import MetricsSnapshot

SNAP = MetricsSnapshot(requests=3, successes=2, failures=1, cancelled=0, in_flight=0,
                       consecutive_failures=1, latency_p50_s=0.42, latency_p95_s=1.5,
                       ttft_p50_s=0.031, output_tok_s=61.25, cost_usd=0.0123)


def report(state: HealthState = "healthy", **kw: object) -> HealthReport:
    base: dict[str, object] = {"provider": "vm", "type": "vllm_mlx", "state": state,
                               "is_cloud": False}
    return HealthReport(**{**base, **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------- coalescing


def test_first_change_flushes_at_once_then_at_most_once_per_interval() -> None:
    c = Coalescer(0.25)
    assert c.note("health", 10.0) == 0.0
    assert c.note("metrics", 10.01) is None  # already scheduled: folded in
    assert c.take(10.02) == {"health", "metrics"}
    assert c.note("pin", 10.05) == pytest.approx(0.22)  # throttled to 0.25 after last flush
    assert c.note("gate", 10.06) is None
    assert c.take(10.27) == {"pin", "gate"}
    assert c.note("config", 20.0) == 0.0  # quiet spell: immediate again
    assert c.take(20.0) == {"config"}
    assert c.take(20.1) == frozenset()


def test_a_storm_of_notifications_becomes_a_bounded_number_of_flushes() -> None:
    """10 000 notifications over 2 s (fake clock) -> about 2 / 0.25 flushes, never more."""
    c = Coalescer(0.25)
    now, flush_at, flushes = 0.0, None, 0
    for i in range(10_000):
        now = i * 0.0002
        if flush_at is not None and now >= flush_at:
            c.take(now)
            flushes, flush_at = flushes + 1, None
        delay = c.note("metrics", now)
        if delay is not None:
            assert flush_at is None
            flush_at = now + delay
    assert 2 / 0.25 <= flushes <= 2 / 0.25 + 1


# ---------------------------------------------------------------- badges


@pytest.mark.parametrize("state,tone", [
    ("healthy", "green"), ("degraded", "amber"), ("down", "red"), ("circuit_open", "red"),
    ("misconfigured", "red"), ("disabled", "grey"), ("not_configured", "grey"),
    ("not_installed", "grey"), ("stopped", "grey"), ("not_running", "grey"),
    ("unknown", "neutral"),
    ("checking", "neutral"), ("starting", "neutral"),
])
def test_tone_of_every_state(state: str, tone: str) -> None:
    assert tone_of(state) == tone


def test_every_health_state_has_a_tone() -> None:
    assert {tone_of(s) for s in typing.get_args(HealthState)} <= {
        "green", "amber", "red", "grey", "neutral"}
    assert set(typing.get_args(HealthState)) <= set(__import__(
        "timmy_magic.notebook.display.tables", fromlist=["TONES"]).TONES)


def test_badge_colours_and_checking_marker() -> None:
    assert "#1a7f37" in badge_html("a", "healthy") and 'data-state="healthy"' in badge_html(
        "a", "healthy")
    assert "#cf222e" in badge_html("a", "down") and "circuit open" in badge_html(
        "a", "circuit_open")
    assert 'data-state="checking"' in badge_html("a", "unknown", checking=True)
    kept = badge_html("a", "down", checking=True)  # keeps its colour, adds a marker
    assert 'data-state="down"' in kept and "↻" in kept


def test_detail_lines_show_server_detail_latency_error_and_hint() -> None:
    r = report("degraded", latency_s=0.012, models=("tiny",),
               detail={"status": "healthy", "model_loaded": False, "model_name": "tiny",
                       "active_requests": 2},
               last_error="model not loaded", hint="start the server")
    text = "\n".join(detail_lines(r, SNAP))
    for want in ("model_loaded: False", "model_name: tiny", "active_requests: 2", "12 ms",
                 "last error: model not loaded", "hint: start the server", "models: tiny",
                 "requests: 3 sent, 2 answered, 1 failed; p95"):
        assert want in text


def test_detail_lists_every_replica() -> None:
    eps = (EndpointHealth("http://a", "healthy"), EndpointHealth("http://b", "down",
                                                                 circuit="open"))
    text = "\n".join(detail_lines(report("degraded", endpoints=eps)))
    assert "http://a: healthy" in text and "http://b: down, circuit open" in text


def test_row_shows_metrics_and_pin() -> None:
    row = row_html(report(latency_s=0.5), SNAP, pinned=True)
    for want in ("timmy-pinned", "500 ms", "420 ms", "31 ms", "61.2", "$0.0123", ">3<"):
        assert want in row
    assert "timmy-pinned" not in row_html(report(), None, pinned=False)


def test_hostile_text_is_escaped_everywhere() -> None:
    evil = '<img src=x onerror="alert(1)">'
    r = report("down", provider='p"><script>', last_error=evil, detail={"x": evil})
    html = table_html({r.provider: r}, {}, None, {}, "t.yaml")
    assert "<script>" not in html and "<img" not in html
    assert "&lt;img" in html


def test_empty_table_says_how_to_add_providers() -> None:
    html = table_html({}, {}, None, {}, "/x/providers.yaml")
    assert "No providers configured" in html and "/x/providers.yaml" in html
    assert "<table" not in html


def test_pin_options_put_auto_first() -> None:
    assert pin_options([]) == ((AUTO, AUTO_VALUE),)
    assert pin_options(["a", "b"]) == ((AUTO, AUTO_VALUE), ("a", "a"), ("b", "b"))


def test_gate_text_and_budget_bar() -> None:
    assert re.search(r"cloud open.*daily budget: \$0\.50 used of \$2\.00, \$1\.50 left",
                     gate_html(True, "", 0.5, 2.0))
    closed = gate_html(False, "local-only mode", 0.0, None)
    assert "cloud closed" in closed and "local-only mode" in closed and "no daily budget" in closed
    assert "$3.00 used of $2.00, $0.00 left" in gate_html(False, "spent", 3.0, 2.0)
    assert budget_percent(0.5, 2.0) == 25
    assert budget_percent(3.0, 2.0) == 100
    assert budget_percent(1.0, None) == 0
    assert budget_percent(0.0, 0.0) == 100


def test_details_read_as_words_not_python_and_cells_never_break_inside() -> None:
    r = report(detail={"launch": [{"state": "adopted", "pid": None,
                                   "message": "adopted server left running"}],
                       "model_loaded": True})
    lines = detail_lines(r)
    assert "launch: state adopted, message adopted server left running" in lines
    assert "model_loaded: True" in lines
    assert not any("{" in ln or "None" in ln for ln in lines), lines
    assert row_html(r, None, False).count("<td style=\"padding:2px 8px;white-space:nowrap\">") == 10


def test_no_cloud_provider_means_no_green_cloud_open() -> None:
    shown = gate_html(True, "", 0.0, 5.0, has_cloud=False)
    assert "cloud open" not in shown and "no cloud providers configured" in shown
    assert "$5.00" not in shown  # no budget row without anything it could gate


def test_a_managed_server_not_started_says_it_starts_on_first_request() -> None:
    from timmy_magic.notebook.display.panel_html import row_html, state_label

    report = HealthReport("local-gemma", "llama_cpp", "stopped", False, None, (), {},
                          hint="starts on first request (or %llm start local-gemma)")
    assert state_label(report) == "starts on first request"
    row = row_html(report, None, False)
    assert "● starts on first request" in row and "● stopped" not in row
    held = HealthReport("x", "llama_cpp", "stopped", False, None, (), {},
                        hint="stopped with %llm stop: %llm start x starts it")
    assert state_label(held) == "stopped"
