"""How one answer is shown while it streams: a live display handle updated in place and
throttled, a plain terminal fallback that prints tokens as they arrive, and ``consume``,
which feeds a stream into a view. The finished answer's render is in ``answer``; the
block shown when no answer could be had is in ``failures``.

Pure parts (``Throttle``; ``AnswerCollector`` is in ``model.partial``) take the time and
the data as arguments; the views do the I/O (``display`` / stdout).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, Protocol

from timmy_magic.model.chat import Delta, Discard, Done, Event, Result, Status, Trying
from timmy_magic.model.partial import AnswerCollector as AnswerCollector  # its old home
from timmy_magic.model.tools import ToolRan, ToolRecord
from timmy_magic.notebook.display.answer import (
    TABLE_ROWS as TABLE_ROWS,
)
from timmy_magic.notebook.display.answer import (
    USER_INTERRUPT as USER_INTERRUPT,
)
from timmy_magic.notebook.display.answer import (  # re-exported: where the views and failures find them
    Final as Final,
)
from timmy_magic.notebook.display.answer import (
    answer_markdown as answer_markdown,
)
from timmy_magic.notebook.display.answer import calls_markdown, calls_plain
from timmy_magic.notebook.display.answer import (
    close_fence as close_fence,
)
from timmy_magic.notebook.display.answer import (
    data_markdown as data_markdown,
)
from timmy_magic.notebook.display.answer import (
    html_tail as html_tail,
)
from timmy_magic.notebook.display.answer import (
    markdown_tail as markdown_tail,
)
from timmy_magic.notebook.display.answer import (
    plain_tail as plain_tail,
)
from timmy_magic.notebook.display.answer import (
    pretty_json as pretty_json,
)
from timmy_magic.notebook.display.failures import ErrorBlock
from timmy_magic.privacy.redact import REDACT
from timmy_magic.routing.runner import Tick
from timmy_magic.text.formats import Format
from timmy_magic.text.markup import md, plain

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


# ------------------------------------------------------------------ views


class View(Protocol):
    def start(self, now: float) -> None: ...
    def trying(self, ev: Trying, now: float) -> None: ...
    def status(self, ev: Status, now: float) -> None: ...
    def delta(self, text: str, now: float) -> None: ...
    def discard(self, ev: Discard, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def tool(self, record: ToolRecord, now: float) -> None: ...
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
                 live: bool = True, placeholder: bool = True) -> None:
        self.fmt = fmt
        self.live = live
        self.placeholder = placeholder
        """False (and not live): nothing is shown until the final render (one display:
        a tool cell replayed from the cache reads as a cached answer does)."""
        self.throttle = Throttle(per_second if live else 0.0)
        self._parts: list[str] = []
        self._size = 0
        self._status = "waiting for an answer…"
        self._handle: Any = None
        self.updates = 0
        self._calls: list[str] = []
        """The tool calls of this cell so far, one line each, shown above the text."""

    def start(self, now: float) -> None:
        if self.placeholder or self.live:
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

    def tool(self, record: ToolRecord, now: float) -> None:
        """A call has run: shown at once (a call is rare, and the user just approved it)."""
        self._calls.append(record.line())
        if self.live:
            self._update(self._live_bundle())
            self.throttle.flushed(now)

    def _live_bundle(self) -> dict[str, str]:
        bundle = self._text_bundle()
        if self._calls:
            bundle["text/plain"] = calls_plain(self._calls) + bundle["text/plain"]
            if "text/markdown" in bundle:
                bundle["text/markdown"] = calls_markdown(self._calls) + bundle["text/markdown"]
        return bundle

    def _text_bundle(self) -> dict[str, str]:
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

    def tool(self, record: ToolRecord, now: float) -> None:
        self._flush_held()
        sep = "\n" if self._printed and not self._printed[-1].endswith("\n") else ""
        self._write(sep + calls_plain([record.line()]).rstrip("\n") + "\n")

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


def rich_frontend(shell: Any, mode: str = "auto") -> bool:
    """The one check of where output goes: rich displays (updated in place, widgets) or
    plain text. ``mode`` is the user's choice (``%config TimmyMagics.display_mode``):
    ``"rich"`` and ``"terminal"`` decide; ``"auto"`` asks whether something other than a
    plain terminal collects ``shell``'s display outputs (a kernel's publisher,
    ``capture_output``...): IPython's base DisplayPublisher just prints text/plain and
    cannot update a display in place, and no shell (plain Python) has none."""
    if mode != "auto":
        return mode == "rich"
    from IPython.core.displaypub import DisplayPublisher

    pub = getattr(shell, "display_pub", None)
    return pub is not None and type(pub) is not DisplayPublisher


def consume(events: Iterable[Event | Tick], view: View, got: AnswerCollector,
            clock: Any) -> Result:
    """Feed a stream of router events to ``view``; return the Done event's result."""
    for ev in events:
        result = feed(ev, view, got, clock())
        if result is not None:
            return result
    raise RuntimeError("the answer stream ended without its final event")


def feed(ev: Event | Tick, view: View, got: AnswerCollector, now: float) -> Result | None:
    """One router event into ``view`` and ``got``; the result once it is Done."""
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
    elif isinstance(ev, ToolRan):
        view.tool(ev.record, now)
    elif isinstance(ev, Done):
        got.result = ev.result
        return ev.result
    else:
        view.tick(now)
    return None
