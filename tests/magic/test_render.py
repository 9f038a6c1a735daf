"""Pure parts of rendering: throttle, answer formats, final bundles, failure blocks, ticks."""

from __future__ import annotations

import pytest

from timmy_magic.model.chat import Attempt, Result, RouteTrace, Skip, Timings, Trying, Usage
from timmy_magic.model.errors import NoProviderAvailable, PinnedProviderFailed
from timmy_magic.model.schema import JSONAnswerError, parse_json
from timmy_magic.notebook.display.css import unwrapped
from timmy_magic.notebook.display.failures import describe_failure
from timmy_magic.notebook.display.render import AnswerCollector, Final, Throttle, answer_markdown
from timmy_magic.text.formats import extract_code, extract_html, fenced_block


def result(text: str = "Hello **world**", error: str | None = None) -> Result:
    trace = RouteTrace(("a", "b"), (Skip("b", "unhealthy", "down"),),
                       (Attempt("a", "http://x", 1, "answered", None, 0.5),))
    return Result(text, "a", "m1", Usage(3, 4), Timings(0.1, 0.5, 10.0), trace, error=error)


# ------------------------------------------------------------------ throttle


def test_throttle_flushes_at_most_per_second_and_only_when_pending() -> None:
    t = Throttle(4)  # every 0.25 s
    assert not t.due(0.0)          # nothing pending
    t.note()
    assert t.due(0.0)              # never flushed: at once
    t.flushed(0.0)
    t.note()
    assert not t.due(0.1) and not t.due(0.249)
    assert t.due(0.25)
    t.flushed(0.25)
    assert not t.due(10.0)         # flushed and nothing new


def test_throttle_coalesces_a_burst_into_few_flushes() -> None:
    t, flushes = Throttle(20), 0
    t.flushed(0.0)
    for i in range(1000):          # 1000 deltas over one second
        now = i / 1000
        t.note()
        if t.due(now):
            t.flushed(now)
            flushes += 1
    assert flushes == 19           # at 0.05, 0.10, ... 0.95


def test_zero_per_second_never_redraws() -> None:
    t = Throttle(0)
    t.flushed(0.0)
    t.note()
    assert not t.due(1e9)


# ------------------------------------------------------------------ formats


def test_fenced_block_first_any_or_by_language_and_unclosed_runs_to_end() -> None:
    text = "Intro\n```python\nprint(1)\n```\nthen\n~~~json\n{\"a\": 1}\n~~~\n"
    assert fenced_block(text) == "print(1)"
    assert fenced_block(text, "json") == '{"a": 1}'
    assert fenced_block("x\n```py\nunfinished(\n") == "unfinished("
    assert fenced_block("no fences") is None
    assert fenced_block("````md\n```inner```\n````") == "```inner```"


def test_extract_code_falls_back_to_the_whole_answer() -> None:
    assert extract_code("Here:\n```\na = 1\nb = 2\n```\nDone") == "a = 1\nb = 2"
    assert extract_code("\nx = 1\n") == "x = 1"


def test_parse_json_fenced_or_bare_and_one_line_errors() -> None:
    assert parse_json('Sure:\n```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parse_json(' [1, 2] ') == [1, 2]
    with pytest.raises(JSONAnswerError, match=r"^the answer is not valid JSON: Expecting "
                                              r"value at line 1 column 1$"):
        parse_json("not json")
    with pytest.raises(JSONAnswerError, match="empty"):
        parse_json("   ")


def test_extract_html_prefers_an_html_block() -> None:
    assert extract_html("x\n```html\n<b>hi</b>\n```") == "<b>hi</b>"
    assert extract_html("<i>raw</i>") == "<i>raw</i>"


# ------------------------------------------------------------------ final render


def test_markdown_final_is_the_result_markdown_with_footer() -> None:
    b = Final(result()).bundle()
    assert b["text/markdown"] == answer_markdown(result())
    assert b["text/plain"].startswith("Hello **world**\n\n— a · m1 · TTFT 0.10s · 4 tok")


def test_text_final_is_plain_only_and_html_final_is_html() -> None:
    assert set(Final(result(), "text").bundle()) == {"text/plain"}
    html = Final(result("```html\n<p>x & y</p>\n```"), "html").bundle()["text/html"]
    assert html.startswith("<p>x & y</p><hr>") and "a · m1" in html


def test_json_final_pretty_prints_or_keeps_the_raw_text() -> None:
    ok = Final(result('{"a":1}'), "json").bundle()
    assert '```json\n{\n  "a": 1\n}\n```' in ok["text/markdown"]
    bad = Final(result("nope"), "json", ("the answer is not valid JSON: x",)).bundle()
    assert unwrapped(bad["text/markdown"]).startswith("nope") and "> the answer is not valid JSON: x" \
        in bad["text/markdown"]
    assert "the answer is not valid JSON: x" in bad["text/plain"]


def test_partial_results_say_so_and_trace_is_optional() -> None:
    b = Final(result("half", error="connection reset"), trace=True).bundle()
    assert "**Stream interrupted:** connection reset" in b["text/markdown"]
    assert "<summary>route</summary>" in b["text/markdown"]
    assert "a#1 answered" in b["text/plain"] and "[stream interrupted" in b["text/plain"]
    assert "route" not in Final(result()).bundle()["text/plain"]


def test_terminal_tail_is_footer_notes_and_route() -> None:
    tail = Final(result(), notes=("note one",), trace=True).tail()
    assert tail.splitlines()[0].startswith("— a · m1")
    assert "note one" in tail and "route:" in tail


# ------------------------------------------------------------------ failures


def test_no_provider_block_has_message_trace_and_start_a_server_hint() -> None:
    trace = RouteTrace(("a",), (), (Attempt("a", "u", 1, "failed", "refused"),))
    block = describe_failure(NoProviderAvailable("every provider failed", trace),
                             config_source="/p.yaml")
    md = unwrapped(block.markdown())
    assert md.startswith("**timmy-magic: no provider could answer**")
    assert "a#1 failed: refused" in md and "Start one of the local servers" in md
    assert "Traceback" not in block.plain() and "`" not in block.plain()


def test_pinned_failure_hint_depends_on_where_the_pin_came_from() -> None:
    trace = RouteTrace(("a",), (), (), pinned="a")
    exc = PinnedProviderFailed("pinned provider 'a' failed: down", trace)
    assert "drop `-p a`" in describe_failure(exc, pin_source="option").markdown()
    assert "`%llm unpin`" in describe_failure(exc, pin_source="session").markdown()
    assert "default_provider = None" in describe_failure(exc, pin_source="default").markdown()
    assert describe_failure(exc).title == "pinned provider 'a' did not answer"


def test_gate_key_model_and_empty_config_hints() -> None:
    trace = RouteTrace(("c", "k", "m"), (Skip("c", "cloud_gate", "local-only mode"),
                                         Skip("k", "not_configured"), Skip("m", "no_model")))
    hints = describe_failure(NoProviderAvailable("x", trace), gate_reason="local-only mode",
                             model="big").hints
    text = " ".join(hints)
    assert "cloud gate is closed (local-only mode)" in text and "`%llm local-only off`" in text
    assert "API key of k" in text and "model 'big'" in text
    empty = describe_failure(NoProviderAvailable("none", RouteTrace()), config_source="/p")
    assert empty.hints == ("No providers are configured: add some to `/p`, then run "  # noqa: ISC004
                            "`%llm reload`.",)


# ------------------------------------------------------------------ collecting and ticks


def test_collector_builds_a_partial_result_on_interrupt() -> None:
    got = AnswerCollector(t0=10.0)
    got.trying(Trying("a", "http://x", 1), 10.1)
    got.delta("Hel", 10.5)
    got.delta("lo", 11.0)
    r = got.partial("interrupted by the user", "m", 12.5)
    assert (r.text, r.provider, r.error) == ("Hello", "a", "interrupted by the user")
    assert r.timings.ttft_s == pytest.approx(0.5) and r.timings.total_s == pytest.approx(2.5)
    assert r.usage.output_tokens == 2 and r.usage.estimated
    assert r.trace.attempts[0].outcome == "broken"
    assert AnswerCollector(0.0).partial("x", None, 1.0).trace.considered == ()


@pytest.mark.parametrize("size, seconds", [(800_000, 8.0), (200_000, 30.0), (20_000, 120.0),
                                           (2_000, 1.0), (2_000, 60.0)])
def test_a_live_display_publishes_linear_in_the_answer(size: int, seconds: float,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Every redraw re-sends the whole text: at a fixed 20 redraws a second an 800 KB
    answer streamed in 8 s published 104 MB (issue 11). The throttle grows the gap with
    the text, so what is published stays within 10x the final text, while a slow stream
    still moves at least once a second."""
    from timmy_magic.notebook.display.render import NotebookView

    published: list[int] = []
    times: list[float] = []
    now = [0.0]

    class Handle:
        def update(self, data: dict[str, str], raw: bool = False) -> None:
            published.append(sum(len(v.encode()) for v in data.values()))
            times.append(now[0])

    def display(data: dict[str, str], **kw: object) -> Handle:
        published.append(sum(len(v.encode()) for v in data.values()))
        times.append(now[0])
        return Handle()

    monkeypatch.setattr("timmy_magic.notebook.display.render.display", display)
    view = NotebookView(per_second=20.0)
    view.start(0.0)
    chunk = "word " * 10  # 50 characters a delta
    deltas = size // len(chunk)
    for i in range(deltas):
        now[0] = seconds * (i + 1) / deltas
        view.delta(chunk, now[0])
        view.tick(now[0])
    final = len(chunk) * deltas
    text_bytes = sum(published) - len(published) * 2_100  # the plain tail: 2,000 at most
    assert text_bytes <= 10 * max(final, 500), (sum(published), final)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # the rate falls as the text grows, about every tenth of growth: never frozen for long
    assert max(gaps) <= max(1.0, 0.15 * seconds), max(gaps)
    assert len(published) >= 10


# ------------------------------------------------------------------ structured data


def test_data_renders_as_a_table_list_as_columns_and_nested_as_json() -> None:
    import dataclasses

    from pydantic import BaseModel

    from timmy_magic.notebook.display.render import data_markdown

    class City(BaseModel):
        city: str
        pop: int | None

    assert data_markdown(City(city="A|<b>", pop=None)) == (
        "| field | value |\n|---|---|\n| city | A\\|&lt;b&gt; |\n| pop | null |")
    rows = data_markdown([{"a": 1, "b": "x"}, {"a": 2, "c": True}])
    assert rows.splitlines()[:4] == ["| a | b | c |", "|---|---|---|", "| 1 | x |  |",
                                     "| 2 |  | true |"]
    nested = data_markdown({"a": {"b": [1, 2]}})
    assert nested.startswith("```json") and '"b": [' in nested
    r = dataclasses.replace(result('{"city": "A", "pop": 3}'), data=City(city="A", pop=3))
    b = Final(r, "json").bundle()
    assert "| city | A |" in b["text/markdown"] and '"pop": 3' in b["text/plain"]
    assert "| city | A |" in answer_markdown(r)


def test_an_invalid_answer_says_not_valid_not_interrupted() -> None:
    b = Final(result('{"x": 1}', error="invalid JSON: y: Field required"), "json").bundle()
    assert "**Not valid:** invalid JSON: y: Field required" in b["text/markdown"]
    assert "[not valid: invalid JSON" in b["text/plain"]
    assert "interrupted" not in b["text/markdown"].lower()


def test_a_discard_drops_the_streamed_text_everywhere(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from timmy_magic.model.chat import Discard
    from timmy_magic.notebook.display.render import NotebookView, TerminalView

    got = AnswerCollector(0.0)
    got.delta("not json", 0.1)
    got.discard()
    assert got.text == "" and got.ttft is None
    view = NotebookView("json", per_second=0.0, live=True)
    view.delta("not json", 0.1)
    view.discard(Discard("a", "invalid JSON: not valid JSON"), 0.2)
    live = view._live_bundle()
    assert "not json" not in str(live) and "asking again" in live["text/plain"]
    capsys.readouterr()  # (the notebook view printed its bundles: no kernel here)
    term = TerminalView(live=True)
    term.delta("not json", 0.1)
    term.discard(Discard("a", "invalid JSON: oops"), 0.2)
    term.delta('{"ok": 1}', 0.3)
    term._flush_held()
    out = capsys.readouterr()
    # what was printed of the dropped text (a tail may have been held back and dropped
    # unprinted) ends its line; the new answer follows
    assert out.out in ('not json\n{"ok": 1}', '{"ok": 1}')
    assert "[a: invalid JSON: oops; asking again]" in out.err


def test_a_terminal_never_prints_a_configured_key_even_split_across_deltas(
        capsys: pytest.CaptureFixture[str]) -> None:
    from timmy_magic.notebook.display.render import TerminalView
    from timmy_magic.privacy.redact import REDACT

    key = "canary-term-key-0a1b2c3d4e5f6789"
    REDACT.add([key])
    text = f"the key is {key} and more text after it, quite a bit more text here."
    for size in (1, 3, 7, len(text)):
        view = TerminalView(live=True)
        for i in range(0, len(text), size):
            view.delta(text[i:i + size], 0.0)
        view._flush_held()
        out = capsys.readouterr().out
        assert key not in out and "canary-term" not in out, size
        assert out.startswith("the key is ") and out.endswith("quite a bit more text here.")
