"""How a finished answer reads: the answer's Markdown with its footer, notes and route
(``answer_markdown``), the same for text and HTML, validated data as a table or pretty
JSON, and ``Final``, the bundle of every mime type one answer is shown with.

The answer text is Markdown the model wrote, rendered as Markdown on purpose; everything
around it (footer, notes, the interruption, the route) is data and goes through markup.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from timmy_magic.model.chat import Result
from timmy_magic.model.schema import INVALID_PREFIX, JSONAnswerError, parse_json
from timmy_magic.model.values import NotShowable, jsonable
from timmy_magic.text.formats import Format, extract_html
from timmy_magic.text.markup import html, md, md_code, plain

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def close_fence(text: str) -> str:
    """``text``, plus the closing fence of a code block it leaves open (a partial answer
    often does), so that what follows it is not swallowed into the code block."""
    open_fence: str | None = None
    for line in text.split("\n"):
        m = _FENCE.fullmatch(line)
        if m is None:
            continue
        run, rest = m.groups()
        if open_fence is None:
            if not (run[0] == "`" and "`" in rest):  # else an inline code span, not a fence
                open_fence = run
        elif run[0] == open_fence[0] and len(run) >= len(open_fence) and not rest.strip():
            open_fence = None
    if open_fence is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + open_fence


def _notes(result: Result, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(getattr(result, "notes", ())) + extra


USER_INTERRUPT = "interrupted by the user"
"""A partial answer's error when the user interrupted the cell: the cell's own error line
says so (it must, so that Run All stops), so the answer shows only a mark in its footer."""


def _footer(result: Result) -> str:
    mark = " · interrupted" if result.error == USER_INTERRUPT else ""
    return result.footer() + mark


def _label(why: str) -> str:
    """What went wrong, as the tail names it: a stream cut short, or an answer that came
    whole but does not match the request's schema."""
    return "not valid" if why.startswith(INVALID_PREFIX) else "stream interrupted"


def _why_partial(result: Result) -> str | None:
    """The error to show under a partial answer (None: none, or the user's interrupt)."""
    return result.error if result.error and result.error != USER_INTERRUPT else None


def markdown_tail(result: Result, notes: tuple[str, ...] = ()) -> str:
    """What follows the answer in Markdown: the footer, why it is partial, the notes."""
    tail = f"\n\n---\n*{md(_footer(result))}*"
    if why := _why_partial(result):
        tail += f"\n\n**{_label(why).capitalize()}:** {md(why)}"
    return tail + "".join(f"\n\n> {md(n)}" for n in _notes(result, notes))


def calls_markdown(lines: list[str] | tuple[str, ...]) -> str:
    """The tool calls of a cell, one list item each (``ToolRecord.line``), escaped: the
    arguments and results come from a model and from kernel functions."""
    if not lines:
        return ""
    return "**Tool calls**\n\n" + "\n".join(f"- {md(ln)}" for ln in lines) + "\n\n"


def calls_plain(lines: list[str] | tuple[str, ...]) -> str:
    return "".join(f"[tool] {plain(ln)}\n" for ln in lines) + ("\n" if lines else "")


def answer_markdown(result: Result, body: str | None = None,
                    notes: tuple[str, ...] = ()) -> str:
    """The Markdown of an answer (``body``: the answer text by default, or its validated
    data as a table or pretty JSON), shared by the final render and
    ``Result._repr_markdown_``."""
    if body is None and result.data is not None:
        body = data_markdown(result.data)
    text = result.text if body is None else body
    calls = calls_markdown(tuple(r.line() for r in result.tool_calls))
    return calls + close_fence(text) + markdown_tail(result, notes)


# ------------------------------------------------------------------ structured data

TABLE_ROWS = 50
"""Most rows of a list shown as a table (the rest: "… N more"); the data holds them all."""


def pretty_json(data: Any) -> str | None:
    """The data as indented JSON text, or None when it cannot be shown."""
    try:
        return json.dumps(jsonable(data), indent=2, ensure_ascii=False)
    except (NotShowable, RecursionError, ValueError, TypeError):
        return None


def _flat(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        not isinstance(v, (dict, list)) for v in value.values())


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def data_markdown(data: Any) -> str | None:
    """Data as a reader wants it: one object of plain fields as a field | value table, a
    list of such objects as a table with a column per field, anything else as pretty
    JSON. Every value is escaped (``markup.md``): it came from a model. None when the data
    cannot be shown (the caller shows the answer's text)."""
    try:
        value = jsonable(data)
    except NotShowable:
        return None
    if _flat(value):
        rows = [f"| {md(k)} | {md(_cell(v))} |" for k, v in value.items()]
        return "\n".join(["| field | value |", "|---|---|", *rows])
    if isinstance(value, list) and value and all(_flat(v) for v in value):
        cols = list(dict.fromkeys(k for v in value for k in v))
        out = ["| " + " | ".join(md(c) for c in cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(md(_cell(v.get(c, ""))) for c in cols) + " |"
                for v in value[:TABLE_ROWS]]
        if len(value) > TABLE_ROWS:
            out.append(f"\n*… {len(value) - TABLE_ROWS} more rows (all in `.data`)*")
        return "\n".join(out)
    pretty = pretty_json(value)
    return md_code(pretty, "json") if pretty is not None else None


def plain_tail(result: Result, notes: tuple[str, ...] = ()) -> str:
    tail = f"\n\n— {plain(_footer(result))}"
    if why := _why_partial(result):
        tail += f"\n[{_label(why)}: {plain(why)}]"
    return tail + "".join(f"\n{plain(n)}" for n in _notes(result, notes))


def html_tail(result: Result, notes: tuple[str, ...] = ()) -> str:
    why = _why_partial(result)
    footer = _footer(result) + (f" · {_label(why)}: {why}" if why else "")
    return (f"<hr><p><small><em>{html(footer)}</em></small></p>"
            + "".join(f"<p><em>{html(n)}</em></p>" for n in _notes(result, notes)))


@dataclass(frozen=True)
class Final:
    """The final render of a result in one format, with notes (one line each)."""

    result: Result
    fmt: Format = "markdown"
    notes: tuple[str, ...] = ()
    trace: bool = False

    def _json(self) -> str | None:
        if self.result.data is not None and (pretty := pretty_json(self.result.data)):
            return pretty
        try:
            return pretty_json(parse_json(self.result.text))
        except (JSONAnswerError, RecursionError):
            return None

    def bundle(self) -> dict[str, str]:
        r = self.result
        plain_text = (calls_plain(tuple(c.line() for c in r.tool_calls)) + self._plain_body()
                      + plain_tail(r, self.notes) + self._plain_route())
        if self.fmt == "text":
            return {"text/plain": plain_text}
        if self.fmt == "html":
            return {"text/html": extract_html(r.text) + html_tail(r, self.notes),
                    "text/plain": plain_text}
        pretty = self._json() if self.fmt == "json" else None
        body = (data_markdown(r.data) if r.data is not None else
                md_code(pretty, "json") if pretty is not None else None)
        trace_md = ("\n\n<details><summary>route</summary>\n\n"
                    + md_code("\n".join(r.trace.lines())) + "\n</details>") if self.trace else ""
        return {"text/markdown": answer_markdown(r, body, self.notes) + trace_md,
                "text/plain": plain_text}

    def _plain_body(self) -> str:
        pretty = self._json() if self.fmt == "json" else None
        return plain(pretty) if pretty is not None else self.result.text

    def _plain_route(self) -> str:
        if not self.trace:
            return ""
        return "\nroute:" + "".join("\n  " + plain(ln) for ln in self.result.trace.lines())

    def tail(self) -> str:
        """What a terminal prints after the streamed text: footer, notes, route."""
        return plain_tail(self.result, self.notes).lstrip("\n") + self._plain_route()
