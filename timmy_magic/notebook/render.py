"""How one answer is shown: a live display handle updated in place and throttled, a plain
terminal fallback that prints tokens as they arrive, and the final render per format (the
block shown when no answer could be had is in ``failures``).

Pure parts (``Throttle``, ``Final``; ``AnswerCollector`` is in ``model.partial``) take the
time and the data as arguments; the views do the I/O (``display`` / stdout). The answer
text is the model's Markdown, shown as Markdown on purpose; every other string in a
bundle (provider, model, errors, notes, statuses, the route) goes through ``markup``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from timmy_magic.notebook.failures import ErrorBlock
from timmy_magic.model.schema import JSONAnswerError, parse_json
from timmy_magic.text.formats import Format, extract_html
from timmy_magic.text.markup import html, md, md_code, plain
from timmy_magic.routing.runner import Tick
from timmy_magic.privacy.redact import REDACT
from timmy_magic.model.schema import INVALID_PREFIX
from timmy_magic.model.chat import Delta, Discard, Done, Event, Result, Status, Trying
from timmy_magic.model.partial import AnswerCollector as AnswerCollector  # its old home
from timmy_magic.model.values import NotShowable, jsonable

CURSOR = "▌"


# ------------------------------------------------------------------ pacing


class Throttle:
    """When may a live display be redrawn? At most ``per_second`` times a second, only
    when something new is pending, and only while what was published stays within a
    budget proportional to the text.

    Every redraw re-sends the whole text, so at a fixed rate a long answer publishes
    O(size²) bytes (an 800 KB answer streamed in 8 s: 104 MB), and a slow one
    O(size x duration). A redraw of the text as it is now is allowed only if everything
    published so far plus this redraw stays within ``budget`` times the text's size (at
    least ``floor`` characters, so the first words redraw freely): the update rate falls
    by itself as the text grows or the stream slows, roughly whenever the text has grown
    by a tenth, and what a streamed answer publishes stays within ``budget`` times its
    final size (plus the final render). A status (``size`` 0) is always due.
    ``per_second <= 0`` never redraws.
    """

    def __init__(self, per_second: float, *, budget: float = 10.0,
                 floor: int = 500) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else math.inf
        self.budget, self.floor = budget, floor
        self.pending = False
        self.size = 0
        """Characters pending to be shown (0: the size does not matter, e.g. a status)."""
        self.shown = 0
        self.published = 0
        """Characters of text published by redraws so far."""
        self._last: float | None = None

    def note(self, size: int = 0) -> None:
        self.pending, self.size = True, size

    def due(self, now: float) -> bool:
        if not self.pending:
            return False
        if self._last is None:
            return True
        if now - self._last < self.interval:
            return False
        if self.size == 0:  # a status line: nothing to budget
            return True
        return self.published + self.size <= self.budget * max(self.size, self.floor)

    def flushed(self, now: float) -> None:
        self._last, self.pending, self.shown = now, False, self.size
        self.published += self.size


# ------------------------------------------------------------------ final render
#
# The answer text is Markdown the model wrote, rendered as Markdown on purpose; everything
# around it (footer, notes, the interruption, the route) is data and goes through markup.

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


def answer_markdown(result: Result, body: str | None = None,
                    notes: tuple[str, ...] = ()) -> str:
    """The Markdown of an answer (``body``: the answer text by default, or its validated
    data as a table or pretty JSON), shared by the final render and
    ``Result._repr_markdown_``."""
    if body is None and result.data is not None:
        body = data_markdown(result.data)
    text = result.text if body is None else body
    return close_fence(text) + markdown_tail(result, notes)


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
        plain_text = self._plain_body() + plain_tail(r, self.notes) + self._plain_route()
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


# ------------------------------------------------------------------ views


class View(Protocol):
    def start(self, now: float) -> None: ...
    def trying(self, ev: Trying, now: float) -> None: ...
    def status(self, ev: Status, now: float) -> None: ...
    def delta(self, text: str, now: float) -> None: ...
    def discard(self, ev: Discard, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def finish(self, final: Final) -> None: ...
    def fail(self, block: ErrorBlock) -> None: ...


class NotebookView:
    """One display handle: a placeholder, throttled updates, then the final render.

    While streaming, text/markdown carries the whole text so far (the Markdown renders as
    it will at the end); next to it, text/plain (for front ends that cannot render
    Markdown) carries at most its last ``PLAIN_TAIL`` characters: the final render has
    all of it. Formats shown as plain text stream the whole text as text/plain.
    """

    PLAIN_TAIL = 2_000

    def __init__(self, fmt: Format = "markdown", per_second: float = 20.0,
                 live: bool = True) -> None:
        self.fmt = fmt
        self.live = live
        self.throttle = Throttle(per_second if live else 0.0)
        self._parts: list[str] = []
        self._size = 0
        self._status = "waiting for an answer…"
        self._handle: Any = None
        self.updates = 0

    def start(self, now: float) -> None:
        self._handle = display(self._live_bundle(), raw=True, display_id=True)
        self.throttle.flushed(now)

    def trying(self, ev: Trying, now: float) -> None:
        again = f" (attempt {ev.number})" if ev.number > 1 else ""
        self._show_status(f"asking {ev.provider}{again}…", now)

    def status(self, ev: Status, now: float) -> None:
        self._show_status(f"{ev.provider}: {ev.message}", now)

    def _show_status(self, status: str, now: float) -> None:
        self._status = status
        if not self._parts:
            self.throttle.note()
            self.tick(now)

    def discard(self, ev: Discard, now: float) -> None:
        self._parts.clear()
        self._size = 0
        self._show_status(f"{ev.provider}: {ev.reason}; asking again…", now)

    def delta(self, text: str, now: float) -> None:
        first = not self._parts
        self._parts.append(text)
        self._size += len(text)
        self.throttle.note(self._size)
        if first and self.live and self.throttle.interval < math.inf:
            self._update(self._live_bundle())  # the first token at once: the throttle
            self.throttle.flushed(now)  # must not delay TTFT into the display
        else:
            self.tick(now)

    def tick(self, now: float) -> None:
        if self.live and self.throttle.due(now):
            self._update(self._live_bundle())
            self.throttle.flushed(now)

    def _live_bundle(self) -> dict[str, str]:
        if not self._parts:
            return {"text/markdown": f"*{md(self._status)}*", "text/plain": plain(self._status)}
        if len(self._parts) > 1:  # join once per redraw, not once per delta
            self._parts[:] = ["".join(self._parts)]
        text = REDACT.known(self._parts[0])  # as the final Result will be
        if self.fmt not in ("markdown", "code"):
            return {"text/plain": text}
        tail = text if len(text) <= self.PLAIN_TAIL else "…" + text[-self.PLAIN_TAIL:]
        return {"text/markdown": text + CURSOR, "text/plain": tail}

    def _update(self, bundle: dict[str, str]) -> None:
        self.updates += 1
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def finish(self, final: Final) -> None:
        self._update(final.bundle())

    def fail(self, block: ErrorBlock) -> None:
        self._update(block.bundle())


class TerminalView:
    """A plain terminal: tokens go to stdout as they arrive, then the footer line."""

    def __init__(self, live: bool = True) -> None:
        self.live = live
        self._printed: list[str] = []
        self._held = ""
        """Streamed text not printed yet: it may be the start of a configured key, which
        is masked once whole (``REDACT.split_safe``), as the kept answer is."""

    def start(self, now: float) -> None:
        pass

    def trying(self, ev: Trying, now: float) -> None:
        pass

    def status(self, ev: Status, now: float) -> None:
        sys.stderr.write(f"[{plain(ev.provider)}: {plain(ev.message)}]\n")
        sys.stderr.flush()

    def discard(self, ev: Discard, now: float) -> None:
        self._held = ""
        if self.live and self._printed:
            sep = "" if "".join(self._printed).endswith("\n") else "\n"
            self._write(sep)
        self._printed.clear()
        sys.stderr.write(f"[{plain(ev.provider)}: {plain(ev.reason)}; asking again]\n")
        sys.stderr.flush()

    def delta(self, text: str, now: float) -> None:
        if self.live:
            held = self._held + text
            cut = REDACT.split_safe(held)
            self._held = held[cut:]
            if cut:
                self._write(REDACT.known(held[:cut]))

    def tick(self, now: float) -> None:
        pass

    def _flush_held(self) -> None:
        if self._held:
            held, self._held = self._held, ""
            self._write(REDACT.known(held))

    def _write(self, text: str) -> None:
        self._printed.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def finish(self, final: Final) -> None:
        self._flush_held()
        if not self.live:
            self._write(final.result.text)
        end = "" if not self._printed or "".join(self._printed).endswith("\n") else "\n"
        self._write(end + final.tail() + "\n")

    def fail(self, block: ErrorBlock) -> None:
        self._flush_held()
        sep = "\n" if self._printed and not self._printed[-1].endswith("\n") else ""
        self._write(sep + block.plain() + "\n")


def display(obj: Any, **kw: Any) -> Any:
    """``IPython.display.display`` (untyped in IPython), imported when first needed."""
    from IPython import display as ipd

    show: Any = ipd.display
    return show(obj, **kw)


def rich_frontend(shell: Any) -> bool:
    """Is something other than a plain terminal collecting display outputs (a kernel's
    publisher, ``capture_output``...)? IPython's base DisplayPublisher just prints
    text/plain and cannot update a display in place."""
    from IPython.core.displaypub import DisplayPublisher

    pub = getattr(shell, "display_pub", None)
    return pub is not None and type(pub) is not DisplayPublisher


def consume(events: Iterable[Event | Tick], view: View, got: AnswerCollector,
            clock: Any) -> Result:
    """Feed a stream of router events to ``view``; return the Done event's result."""
    for ev in events:
        now = clock()
        if isinstance(ev, Delta):
            got.delta(ev.text, now)
            view.delta(ev.text, now)
        elif isinstance(ev, Trying):
            got.trying(ev, now)
            view.trying(ev, now)
        elif isinstance(ev, Status):
            view.status(ev, now)
        elif isinstance(ev, Discard):
            got.discard()
            view.discard(ev, now)
        elif isinstance(ev, Done):
            got.result = ev.result
            return ev.result
        else:
            view.tick(now)
    raise RuntimeError("the answer stream ended without its final event")
