"""The ``%llm status`` / ``%llm providers`` tables: states in words with a coloured dot (no
colour emoji: they show as empty boxes without an emoji font), one money format."""

from __future__ import annotations

import re
import typing

import pytest

from timmy_magic.config import parse_config
from timmy_magic.model.chat import HealthReport, HealthState
from timmy_magic.notebook.display.css import unwrapped
from timmy_magic.notebook.display.tables import (
    TONE_COLOURS,
    providers_bundle,
    state_badge,
    status_bundle,
)
from timmy_magic.routing.gate import money
from timmy_magic.routing.metrics import MetricsSnapshot

EMOJI = ("🟢", "🟡", "🔴", "⛔", "⚠", "⚪", "🔑", "📦", "❔", "💤", "⏳")


def _colour_emoji(text: str) -> list[str]:
    """Characters drawn from a colour emoji font (or as an empty box without one)."""
    return [c for c in text if ord(c) >= 0x1F000 or c in EMOJI or c == "\ufe0f"]


def reports(*states: HealthState) -> dict[str, HealthReport]:
    return {f"p{i}": HealthReport(f"p{i}", "llama_cpp", s, False)
            for i, s in enumerate(states)}


def status(*states: HealthState, budget: float | None = 5.0, spent: float = 0.0,
           metrics: dict[str, MetricsSnapshot] | None = None) -> dict[str, str]:
    return status_bundle(reports(*states), metrics or {}, pinned=None, gate_open=True,
                         gate_reason="", spent_usd=spent, budget_usd=budget)


def test_status_has_no_colour_emoji_in_any_state() -> None:
    b = status(*typing.get_args(HealthState))
    assert _colour_emoji(b["text/markdown"]) == [] and _colour_emoji(b["text/plain"]) == []


@pytest.mark.parametrize("state,colour,word", [
    ("healthy", "#1a7f37", "healthy"), ("down", "#cf222e", "down"),
    ("circuit_open", "#cf222e", "circuit open"), ("not_configured", "#8c959f", "not configured"),
    ("stopped", "#8c959f", "stopped"), ("degraded", "#bf8700", "degraded"),
])
def test_state_cell_is_a_coloured_dot_and_the_state_in_words(state: str, colour: str,
                                                             word: str) -> None:
    md = status("healthy", state)["text/markdown"]
    badge = state_badge(state)
    assert f"| p1 | {badge} |" in md
    assert f'data-state="{state}"' in badge and f"color:{colour}" in badge
    assert badge.endswith(f"</span> {word}") and "●" in badge


def test_plain_text_reads_the_state_as_words() -> None:
    text = status("healthy", "circuit_open")["text/plain"].splitlines()
    assert text[1].split()[0] == "provider" and text[1].split()[1] == "state"
    assert text[2].split()[:2] == ["p0", "healthy"]
    assert text[3].split()[:3] == ["p1", "circuit", "open"]
    assert "<span" not in "\n".join(text)


def test_every_tone_has_a_colour() -> None:
    assert set(TONE_COLOURS) == {"green", "amber", "red", "grey", "neutral"}


@pytest.mark.parametrize("usd,shown", [
    (0.0, "$0.00"), (5.0, "$5.00"), (0.046, "$0.05"), (0.0004, "$0.0004"), (12.345, "$12.35"),
    (0.005, "$0.01"), (0.00049, "$0.0005"),
])
def test_one_money_format(usd: float, shown: str) -> None:
    assert money(usd) == shown


def test_status_head_uses_the_money_format() -> None:
    assert "spent today $0.00 of $5.00" in status("healthy")["text/plain"]
    assert "spent today $0.0004 ·" in status("healthy", budget=None, spent=0.0004)["text/plain"]



def test_providers_head_counts_in_words() -> None:
    one = parse_config("providers:\n  - {name: a, type: llama_cpp}", source="t.yaml", env={})
    assert providers_bundle(one, None)["text/plain"].startswith("1 provider from t.yaml")


def snapshot(requests: int, successes: int, failures: int, in_flight: int = 0
             ) -> MetricsSnapshot:
    return MetricsSnapshot(requests=requests, successes=successes, failures=failures,
                           cancelled=0, in_flight=in_flight, consecutive_failures=failures,
                           latency_p50_s=None, latency_p95_s=None, ttft_p50_s=None,
                           output_tok_s=None, cost_usd=0.0)


def test_requests_column_says_in_words_how_many_were_answered() -> None:
    """Not "0/1" (answered of sent? failed of tried?): the count answered of those sent."""
    b = status("not_running", "healthy", "healthy", "healthy", metrics={
        "p0": snapshot(1, 0, 1), "p1": snapshot(3, 3, 0), "p2": snapshot(2, 1, 0, 1)})
    md, text = unwrapped(b["text/markdown"]), b["text/plain"]
    assert "| 0 of 1 answered |" in md and "| 3 of 3 answered |" in md
    assert "| 1 of 2 answered, 1 in flight |" in md
    assert md.splitlines()[-1].split(" | ")[5] == "—"  # p3: nothing sent yet
    assert "0 of 1 answered" in text and not re.search(r"\b\d+/\d+\b", md + text)


def test_a_long_note_in_the_status_table_is_cut_between_words() -> None:
    hint = ("nothing listening at http://127.0.0.1:9: start it (llama-server -m MODEL.gguf "
            "--port 9) or set enabled: false for it in providers.yaml, then %llm reload")
    for pad in range(12):  # every cut point near the end of the note's room
        long = f"{'x' * pad} {hint}"
        b = status_bundle({"p": HealthReport("p", "llama_cpp", "not_running", False, hint=long)},
                          {}, pinned=None, gate_open=True, gate_reason="", spent_usd=0.0,
                          budget_usd=None)
        cut = next(line for line in b["text/plain"].split("\n") if "…" in line)
        shown = cut.rsplit("…", 1)[0].split(" start it ", 1)[1]
        assert f" start it {shown} " in long, (pad, shown)  # it ends with a whole word
        md_cut = next(line for line in b["text/markdown"].split("\n") if "…" in line)
        assert md_cut.rsplit("…", 1)[0].endswith(shown.rsplit(" ", 1)[-1]), md_cut
