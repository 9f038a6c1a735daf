"""Injection through every field we did not write, into every Markdown and HTML output.

A provider name, a model id or the ``model`` a server sends, an error message, a hint, a
note, an endpoint URL, a config path or warning, a status line, a prompt in the history, a
bench label: any of them may hold HTML, Markdown, math, a code fence, a table breaker or
text that cannot be encoded. Each payload of the corpus goes into each field, and each
output that shows the field is rendered as a Jupyter front end would (``tests.support.
rendered``: JupyterLab's removeMath, a real Markdown parser, MathJax's view of the DOM).
A render passes when

- no math: nothing the front end would typeset;
- the same elements as with a harmless value (no new tag, row, cell, block, link, image,
  script; no fence closed early): the payload added no markup;
- the payload reads as written (cleaned: U+FFFD for what cannot be sent, keys masked),
  marks included, so the field did reach the output as text;
- text/plain holds no lone surrogate, no control character and no key.

Figures: injection fields, outputs, field x output pairs, payloads, renders checked, not
inert (0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.reliability.conftest import Figures
from tests.support.rendered import PARSER, math, render, structure, text_of
from timmy_magic.bench.report import BenchResult, render_html, render_text
from timmy_magic.config import Config, ModelConfig, ProviderConfig
from timmy_magic.model.chat import (
    Attempt,
    HealthReport,
    Result,
    RouteTrace,
    Skip,
    Status,
    Timings,
    Trying,
    Usage,
)
from timmy_magic.model.errors import NoProviderAvailable, PinnedProviderFailed
from timmy_magic.notebook.display.failures import ErrorBlock, describe_failure
from timmy_magic.notebook.display.render import Final, NotebookView, answer_markdown
from timmy_magic.notebook.display.tables import providers_bundle, status_bundle
from timmy_magic.notebook.history import Conversation, Turn
from timmy_magic.privacy.redact import REDACT
from timmy_magic.text.markup import clean

PART = "injection"
SECRET = "sk-inject-0123456789abcdefXYZ"
MARK = "ZQ7 "
"""Starts every value: a word no output contains by itself."""

CORPUS = {
    "html": "<b>bold</b> <i>it</i> <div>block</div>",
    "script": "<script>alert(1)</script>",
    "img-onerror": '<img src=x onerror="alert(1)">',
    "js-link": "[click](javascript:alert(1)) ![i](x.png)",
    "autolink": "<javascript:alert(1)> <http://evil.example>",
    "markdown": "**bold** _it_ ~~gone~~ `code` > quote",
    "heading": "# Heading",
    "lists": "- item\n1. first\n+ plus",
    "setext": "title\n===\n---",
    "math-inline": "$x^2$ and $y$",
    "math-money": "costs $5 of $10",
    "math-display": "$$\\int_0^1 f$$",
    "math-latex": "\\(a\\) \\[b\\] \\begin{align}c\\end{align}",
    "fence": "```\n<b>out</b>\n```",
    "fence-long": "````html\n<img src=x onerror=alert(1)>\n````",
    "fence-tilde": "~~~\n<b>x</b>\n~~~",
    "table-breaker": "a | b\n|---|---|\n| c | d |",
    "newlines": "one\n\ntwo\r\nthree\rfour",
    "entities": "&lt;b&gt; &#36;x&#36; &amp; &#x3C;i&#x3E;",
    "backslashes": "\\*not em\\* \\$5\\$ C:\\dir\\ \\\\",
    "comment": "<!-- hide the rest",
    "details": "<details open><summary>x</summary>",
    "math-marker": "@@0@@ and @@1@@",
    "lone-surrogates": "a \ud800 b \udfff c",
    "controls": "nul\x00 bell\x07 esc\x1b rlo\u202e end",
    "key": f"token {SECRET} leaked",
}


@dataclass(frozen=True)
class Values:
    """Every field an output may show, harmless by default."""

    provider: str = "alpha"
    model: str = "m1"
    model_id: str = "m2"
    error: str = "boom"
    hint: str = ""
    note: str = "a note"
    url: str = "http://127.0.0.1:9/v1"
    source: str = "/etc/providers.yaml"
    default_model: str = "m3"
    warning: str = "a warning"
    skip_detail: str = "down"
    gate_reason: str = "local-only mode"
    status: str = "starting the server"
    prompt: str = "hello"
    answer_preview: str = "an answer"
    json_answer: str = "value"


@dataclass(frozen=True)
class Rendered:
    kind: str  # "markdown", "html" or "plain"
    text: str


Output = Callable[[Values], list[Rendered]]


def bundle(b: dict[str, str]) -> list[Rendered]:
    kinds = {"text/markdown": "markdown", "text/html": "html", "text/plain": "plain"}
    return [Rendered(kinds[k], v) for k, v in b.items()]


# ------------------------------------------------------------------ the outputs


def status(v: Values) -> list[Rendered]:
    reports = {v.provider: HealthReport(v.provider, "llama_cpp", "down", False, 0.2,
                                        (v.model_id, "other"), last_error=v.error,
                                        hint=v.hint or None),
               "beta": HealthReport("beta", "openai", "healthy", True, 0.05, ("b",))}
    return bundle(status_bundle(reports, {}, pinned=v.provider, gate_open=False,
                                gate_reason=v.gate_reason, spent_usd=0.046, budget_usd=0.01))


def providers(v: Values) -> list[Rendered]:
    def spec(name: str, url: str, model: str) -> ProviderConfig:
        # built without validation: the loader now refuses such names and URLs, and the
        # rendering layer must hold on its own (a plugin or a future field may carry them)
        return ProviderConfig.model_construct(name=name, type="llama_cpp", base_url=url,
                                              models=[ModelConfig.model_construct(name=model)])

    config = Config(providers=[spec(v.provider, v.url, v.default_model),
                               spec("beta", "http://127.0.0.1:8/v1", "b")],
                    source=v.source, warnings=(v.warning,))
    return bundle(providers_bundle(config, pinned=v.provider))


def _trace(v: Values, pinned: bool) -> RouteTrace:
    return RouteTrace((v.provider, "beta"),
                      (Skip("beta", "cloud_gate", v.skip_detail),
                       Skip(v.provider, "no_model", v.skip_detail)),
                      (Attempt(v.provider, v.url, 1, "failed", v.error),),
                      pinned=v.provider if pinned else None)


def error_block(v: Values) -> list[Rendered]:
    cascade = describe_failure(NoProviderAvailable(f"every provider failed: {v.error}",
                                                   _trace(v, False)),
                               gate_reason=v.gate_reason, config_source=v.source,
                               model=v.model)
    pinned = describe_failure(PinnedProviderFailed(f"{v.provider} failed: {v.error}",
                                                   _trace(v, True)), pin_source="option")
    empty = describe_failure(NoProviderAvailable("none", RouteTrace()), config_source=v.source)
    start = ErrorBlock(f"could not start {v.provider}", v.error, (), ("`%llm status` helps.",))
    return [r for b in (cascade, pinned, empty, start) for r in bundle(b.bundle())]


def result(v: Values, text: str = "Hello **world**.") -> Result:
    return Result(text, v.provider, v.model, Usage(3, 4), Timings(0.1, 0.5, 10.0),
                  _trace(v, False), error=v.error, cost_usd=0.0042, endpoint=v.url,
                  notes=(v.note,))


def final(fmt: str, trace: bool = False) -> Output:
    def out(v: Values) -> list[Rendered]:
        text = json.dumps({"v": v.json_answer}) if fmt == "json" else "Hello **world**."
        return bundle(Final(result(v, text), fmt, (v.note, "code inserted"), trace).bundle())
    return out


def result_repr(v: Values) -> list[Rendered]:
    r = result(v)
    return [Rendered("markdown", answer_markdown(r)), Rendered("plain", str(r.footer()))]


def conversation(v: Values) -> list[Rendered]:
    c = Conversation()
    c.record(Turn("k1", v.prompt, v.answer_preview, v.provider))
    c.record(Turn("k2", "second", "fine", None))
    return [Rendered("markdown", c._repr_markdown_()), Rendered("plain", repr(c))]


def bench_result(v: Values) -> BenchResult:
    def record(provider: str, model: str, error: str | None) -> dict[str, Any]:
        return {"provider": provider, "model": model, "concurrency": 1, "requests": 2,
                "completed": 2, "errors": 1 if error else 0, "incomplete": 0, "cancelled": 0,
                "ttft_ms_p50": 12.0, "output_tok_s": 50.0, "first_error": error}

    return BenchResult([record(v.provider, v.model, v.error), record("beta", "b", None)],
                       [{"provider": v.provider, "index": 0, "status": "error",
                         "ttft_ms": None, "e2e_ms": 3.0, "error": v.error}],
                       {"n": 2, "concurrency": [1], "prompts": [v.prompt]}, {}, False,
                       [v.note])


def bench(v: Values) -> list[Rendered]:
    b = bench_result(v)
    return [Rendered("html", render_html(b)), Rendered("plain", render_text(b))]


def live(v: Values) -> list[Rendered]:
    shown: list[dict[str, str]] = []

    class Handle:
        def update(self, data: dict[str, str], raw: bool = False) -> None:
            shown.append(data)

    def display(data: dict[str, str], **kw: Any) -> Handle:
        shown.append(data)
        return Handle()

    mp = pytest.MonkeyPatch()
    mp.setattr("timmy_magic.notebook.display.render.display", display)
    try:
        view = NotebookView(per_second=1000)
        view.start(0.0)
        view.trying(Trying(v.provider, v.url, 2), 1.0)
        view.status(Status(v.provider, v.status), 2.0)
    finally:
        mp.undo()
    return [r for data in shown[1:] for r in bundle(data)]


OUTPUTS: dict[str, tuple[Output, tuple[str, ...]]] = {
    "%llm status": (status, ("provider", "model_id", "error", "hint", "gate_reason")),
    "%llm providers": (providers, ("provider", "url", "default_model", "source", "warning")),
    "ErrorBlock": (error_block, ("provider", "model", "error", "skip_detail", "gate_reason",
                                 "source")),
    "Final markdown": (final("markdown", trace=True), ("provider", "model", "error", "note",
                                                       "skip_detail")),
    "Final json": (final("json"), ("provider", "model", "error", "note", "json_answer")),
    "Final code": (final("code"), ("provider", "model", "error", "note")),
    "Final html": (final("html"), ("provider", "model", "error", "note")),
    "Final text": (final("text", trace=True), ("provider", "model", "error", "note",
                                               "skip_detail")),
    "Result as the notebook shows it": (result_repr, ("provider", "model", "error", "note")),
    "Conversation": (conversation, ("provider", "prompt", "answer_preview")),
    "bench report": (bench, ("provider", "model", "error", "prompt", "note")),
    "live display": (live, ("provider", "status")),
}
PAIRS = [(o, f) for o, (_, fields) in OUTPUTS.items() for f in fields]
FIELDS = sorted({f for _, f in PAIRS})


@pytest.fixture(scope="module", autouse=True)
def planted_key() -> Iterator[None]:
    REDACT.add([SECRET])
    yield


def shown(value: str) -> str:
    """The value as a reader should see it: cleaned (U+FFFD, keys masked), whitespace
    collapsed. A JSON answer is shown as JSON."""
    return " ".join(clean(value).split())


def check(r: Rendered, base: Rendered, field: str, value: str) -> list[str]:
    if r.kind == "plain":
        bad = [f"unsendable {c!r}" for c in set(r.text)
               if re.match("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", c)]
        return bad + ([f"key shown: {r.text[:200]!r}"] if SECRET in r.text else [])
    html = r.text if r.kind == "html" else render(r.text)
    problems = math(r.text, html=r.kind == "html")
    if structure(html) != structure(base.text if r.kind == "html" else render(base.text)):
        problems.append(f"markup changed: {structure(html)} vs "
                        f"{structure(base.text if r.kind == 'html' else render(base.text))}")
    if SECRET in r.text:
        problems.append("key shown")
    return problems


def visible(renders: list[Rendered], field: str, value: str) -> bool:
    """Does the value read as written in at least one rendered output?"""
    want = shown(json.dumps(value, ensure_ascii=False) if field == "json_answer" else value)
    for r in renders:
        text = " ".join(r.text.split()) if r.kind == "plain" else \
            text_of(r.text if r.kind == "html" else render(r.text))
        if want in text:
            return True
    return False


@pytest.mark.parametrize("output, field", PAIRS, ids=[f"{o}-{f}" for o, f in PAIRS])
def test_no_field_injects_into_any_output(output: str, field: str, figures: Figures) -> None:
    part = figures.part(PART, "injection fields", "outputs", "field x output pairs",
                        "payloads", "renders checked", "not inert")
    part.set("injection fields", len(FIELDS))
    part.set("outputs", len(OUTPUTS))
    part.set("field x output pairs", len(PAIRS))
    part.set("payloads", len(CORPUS))
    if f"parser: {PARSER}" not in part.notes:
        part.notes.append(f"parser: {PARSER}")
    make, _ = OUTPUTS[output]
    base = make(replace(Values(), **{field: MARK + "harmless"}))
    failures: list[str] = []
    for name, payload in CORPUS.items():
        value = MARK + payload
        renders = make(replace(Values(), **{field: value}))
        assert [r.kind for r in renders] == [b.kind for b in base]
        for r, b in zip(renders, base):
            part.add("renders checked")
            problems = check(r, b, field, value)
            if problems:
                part.add("not inert")
                failures.append(f"{name} ({r.kind}): {problems}")
        if not visible(renders, field, value):
            failures.append(f"{name}: the value does not read as written anywhere")
    assert not failures, "\n".join(failures)
