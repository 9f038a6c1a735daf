"""How one answer is shown: a live display handle updated in place and throttled, a plain
terminal fallback that prints tokens as they arrive, and the final render per format (the
block shown when no answer could be had is in ``failures``).

Pure parts (``Throttle``, ``Collector``, ``Final``) take the time and the data as
arguments; the views do the I/O (``display`` / stdout).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .failures import ErrorBlock
from .formats import Format, JSONAnswerError, extract_html, parse_json
from .runner import _END, _Raised  # the same end/exception markers as the bridge
from .types import Attempt, Delta, Done, Event, Result, RouteTrace, Status, Timings, Trying, Usage

T = TypeVar("T")
CURSOR = "▌"


# ------------------------------------------------------------------ pacing


class Throttle:
    """When may a live display be redrawn? At most ``per_second`` times a second, and only
    when something new is pending. ``per_second <= 0`` never redraws."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else math.inf
        self.pending = False
        self._last: float | None = None

    def note(self) -> None:
        self.pending = True

    def due(self, now: float) -> bool:
        return self.pending and (self._last is None or now - self._last >= self.interval)

    def flushed(self, now: float) -> None:
        self._last, self.pending = now, False


@dataclass(frozen=True, slots=True)
class Tick:
    """No event for a while: a chance to flush text the throttle held back."""


TICK = Tick()


async def with_ticks(events: AsyncIterator[T], every: float) -> AsyncIterator[T | Tick]:
    """``events``' items, plus a Tick whenever none came for ``every`` seconds. Closing or
    cancelling this generator cancels the pending read and closes ``events``.

    One task reads ``events`` into a queue and one timer, re-armed only when it fires,
    adds the ticks: an item costs a queue put and get. (A task and an ``asyncio.wait``
    per item cost about as much CPU as the whole router per token: docs/performance.md.)
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    quiet_since = loop.time()

    async def pump() -> None:
        nonlocal quiet_since
        try:
            async for item in events:
                queue.put_nowait(item)
                quiet_since = loop.time()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised to the consumer
            queue.put_nowait(_Raised(exc))
        else:
            queue.put_nowait(_END)

    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal quiet_since, timer
        now = loop.time()
        if now - quiet_since >= every:
            queue.put_nowait(TICK)
            quiet_since = now
        timer = loop.call_at(quiet_since + every, tick)

    reader = asyncio.ensure_future(pump())
    timer = loop.call_at(quiet_since + every, tick)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        if timer is not None:
            timer.cancel()
        if not reader.done():
            reader.cancel()
            with suppress(BaseException):
                await reader
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


# ------------------------------------------------------------------ collecting


@dataclass
class Collector:
    """What a stream delivered so far; builds the partial Result on an interrupt."""

    t0: float
    parts: list[str] = field(default_factory=list)
    provider: str | None = None
    endpoint: str = ""
    attempt: int = 0
    attempt_started: float = 0.0
    ttft: float | None = None
    result: Result | None = None

    def trying(self, ev: Trying, now: float) -> None:
        self.provider, self.endpoint, self.attempt = ev.provider, ev.endpoint, ev.number
        self.attempt_started = now

    def delta(self, text: str, now: float) -> None:
        if self.ttft is None:
            self.ttft = now - self.t0
        self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def partial(self, error: str, model: str | None, now: float) -> Result:
        chunks = len(self.parts)
        gen = now - self.t0 - (self.ttft or 0.0)
        tok_s = chunks / gen if chunks and gen > 0 else None
        attempts = (Attempt(self.provider, self.endpoint, self.attempt,
                            "broken" if chunks else "failed", error,
                            now - self.attempt_started),) if self.provider else ()
        trace = RouteTrace((self.provider,) if self.provider else (), (), attempts)
        return Result(self.text, self.provider, model, Usage(None, chunks, estimated=True),
                      Timings(self.ttft, now - self.t0, tok_s), trace, error=error,
                      endpoint=self.endpoint or None)


# ------------------------------------------------------------------ final render


def _md_footer(result: Result) -> str:
    tail = f"\n\n---\n*{result.footer()}*"
    if result.error:
        tail += f"\n\n**Stream interrupted:** {result.error}"
    return tail


def _plain_footer(result: Result) -> str:
    tail = f"\n\n— {result.footer()}"
    if result.error:
        tail += f"\n[stream interrupted: {result.error}]"
    return tail


@dataclass(frozen=True)
class Final:
    """The final render of a result in one format, with notes (one line each)."""

    result: Result
    fmt: Format = "markdown"
    notes: tuple[str, ...] = ()
    trace: bool = False

    def _json(self) -> str | None:
        try:
            return json.dumps(parse_json(self.result.text), indent=2, ensure_ascii=False)
        except JSONAnswerError:
            return None

    def bundle(self) -> dict[str, str]:
        r = self.result
        notes_md = "".join(f"\n\n> {n}" for n in self.notes)
        trace_md = ("\n\n<details><summary>route</summary>\n\n```text\n"
                    + "\n".join(r.trace.lines()) + "\n```\n</details>") if self.trace else ""
        plain = self._plain_body() + _plain_footer(r) + self._plain_extra()
        if self.fmt == "text":
            return {"text/plain": plain}
        if self.fmt == "html":
            notes_html = "".join(f"<p><em>{_html_escape(n)}</em></p>" for n in self.notes)
            footer = r.footer() + (f" · stream interrupted: {r.error}" if r.error else "")
            html = (extract_html(r.text) + "<hr><p><small><em>" + _html_escape(footer)
                    + "</em></small></p>" + notes_html)
            return {"text/html": html, "text/plain": plain}
        pretty = self._json() if self.fmt == "json" else None
        body = f"```json\n{pretty}\n```" if pretty is not None else r.text
        return {"text/markdown": body + _md_footer(r) + notes_md + trace_md,
                "text/plain": plain}

    def _plain_body(self) -> str:
        pretty = self._json() if self.fmt == "json" else None
        return pretty if pretty is not None else self.result.text

    def _plain_extra(self) -> str:
        lines = list(self.notes)
        if self.trace:
            lines += ["route:"] + ["  " + ln for ln in self.result.trace.lines()]
        return "".join("\n" + ln for ln in lines)

    def tail(self) -> str:
        """What a terminal prints after the streamed text: footer, notes, route."""
        return _plain_footer(self.result).lstrip("\n") + self._plain_extra()


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------ views


class View(Protocol):
    def start(self, now: float) -> None: ...
    def trying(self, ev: Trying, now: float) -> None: ...
    def status(self, ev: Status, now: float) -> None: ...
    def delta(self, text: str, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def finish(self, final: Final) -> None: ...
    def fail(self, block: ErrorBlock) -> None: ...


class NotebookView:
    """One display handle: a placeholder, throttled updates, then the final render."""

    def __init__(self, fmt: Format = "markdown", per_second: float = 20.0,
                 live: bool = True) -> None:
        self.fmt = fmt
        self.live = live
        self.throttle = Throttle(per_second if live else 0.0)
        self._parts: list[str] = []
        self._status = "waiting for an answer…"
        self._handle: Any = None
        self.updates = 0

    def start(self, now: float) -> None:
        self._handle = display(self._live_bundle(), raw=True, display_id=True)
        self.throttle.flushed(now)

    def trying(self, ev: Trying, now: float) -> None:
        again = f" (attempt {ev.number})" if ev.number > 1 else ""
        self._status = f"asking {ev.provider}{again}…"
        if not self._parts:
            self.throttle.note()
            self.tick(now)

    def status(self, ev: Status, now: float) -> None:
        self._status = f"{ev.provider}: {ev.message}"
        if not self._parts:
            self.throttle.note()
            self.tick(now)

    def delta(self, text: str, now: float) -> None:
        first = not self._parts
        self._parts.append(text)
        self.throttle.note()
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
            return {"text/markdown": f"*{self._status}*", "text/plain": self._status}
        text = "".join(self._parts)
        if self.fmt in ("markdown", "code"):
            return {"text/markdown": text + CURSOR, "text/plain": text}
        return {"text/plain": text}

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

    def start(self, now: float) -> None:
        pass

    def trying(self, ev: Trying, now: float) -> None:
        pass

    def status(self, ev: Status, now: float) -> None:
        sys.stderr.write(f"[{ev.provider}: {ev.message}]\n")
        sys.stderr.flush()

    def delta(self, text: str, now: float) -> None:
        if self.live:
            self._write(text)

    def tick(self, now: float) -> None:
        pass

    def _write(self, text: str) -> None:
        self._printed.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def finish(self, final: Final) -> None:
        if not self.live:
            self._write(final.result.text)
        end = "" if not self._printed or "".join(self._printed).endswith("\n") else "\n"
        self._write(end + final.tail() + "\n")

    def fail(self, block: ErrorBlock) -> None:
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


def consume(events: Iterable[Event | Tick], view: View, got: Collector,
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
        elif isinstance(ev, Done):
            got.result = ev.result
            return ev.result
        else:
            view.tick(now)
    raise RuntimeError("the answer stream ended without its final event")
