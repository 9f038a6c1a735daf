"""One notebook session: the router, the answer cache as cells use it, the conversation,
the last result, the panels, and the one ``ask`` that a ``%%llm`` cell, ``%llm fix`` /
``explain`` and side by side all go through.

The magics (``cell``, ``commands``) parse arguments and call the Session, as IPython's
own magics call their managers; ``timmy_magic.map`` and ``timmy_magic.panel()`` use it
too. It owns, for one shell: context building (``context``) and fitting it to the model's
window, vision, conversation memory, the cache lookup and record, streaming into a view,
keeping the result (``last_result``, ``-o``) and acting on a complete answer (``-f code``,
``fix``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from IPython.core.error import UsageError

from timmy_magic.model.chat import ChatRequest, Event, ImagePart, Message, Result, TextPart
from timmy_magic.model.errors import InvalidRequest, RoutingError, UnknownProvider
from timmy_magic.model.schema import JSONAnswerError, Schema, parse_json
from timmy_magic.notebook.display.failures import ErrorBlock, describe_failure
from timmy_magic.notebook.display.render import (
    USER_INTERRUPT,
    AnswerCollector,
    Final,
    NotebookView,
    TerminalView,
    View,
    consume,
    display,
    rich_frontend,
)
from timmy_magic.notebook.history import Conversation, Turn
from timmy_magic.routing.router import Router
from timmy_magic.routing.runner import Tick
from timmy_magic.text.formats import Format, extract_code
from timmy_magic.text.markup import count

if TYPE_CHECKING:
    from timmy_magic.batch import MapResult
    from timmy_magic.compare import Comparison
    from timmy_magic.context import Context
    from timmy_magic.notebook.cached import CellCache

INTERRUPTED = USER_INTERRUPT


class StreamInterrupted(KeyboardInterrupt):
    """Raised once an interrupted cell has shown and stored its partial answer: the cell
    still counts as interrupted (a Run All stops there), shown as one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"StreamInterrupted: {self}"]


class DisplaySettings(Protocol):
    """How answers are shown (``%config TimmyMagics.display_mode`` and friends)."""

    display_mode: str
    updates_per_second: float


@dataclass(frozen=True)
class CellOptions:
    provider: str | None
    pin_source: str | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    fmt: Format
    out: str | None
    stream: bool
    chat: bool
    new: bool
    interpolate: bool
    trace: bool
    cache: bool | None = None
    """--cache (True) / --no-cache (False) / neither (None: the session's cache mode)."""
    cells: str | None = None
    names: tuple[str, ...] = ()
    error: bool = False
    show_context: bool = False
    providers: tuple[str, ...] = ()
    """-p a,b,c: several providers side by side (``provider`` is then None)."""
    models: tuple[str, ...] = ()
    """-m x,y: several models side by side (``model`` is then None)."""
    schema: Schema | None = None
    """--schema NAME: the answer must match it (``VAR.data`` holds the validated value)."""


class Session:
    """The state of one shell's notebook session, and the one ``ask``."""

    def __init__(self, shell: Any, router: Router, settings: DisplaySettings) -> None:
        self.shell = shell
        self.router = router
        self.settings = settings
        self.conversation = Conversation()
        self.last_result: Result | Comparison | MapResult | None = None
        """The last answer (a ``Comparison`` after a side-by-side cell, a ``MapResult``
        after ``timmy_magic.map``)."""
        self.active: AnswerCollector | None = None
        """What the stream in progress has delivered so far (None between cells)."""
        self.panels: list[Any] = []

    @cached_property
    def answers(self) -> CellCache:
        """The answer cache as cells use it, built (and imported) on the first cell."""
        from timmy_magic.notebook.cached import CellCache

        return CellCache(self)

    def context(self, prompt: str, opts: CellOptions, system: str | None = None) -> Context:
        """The prompt with what ``opts`` ask for (cells, variables, the error), masked; a
        one-line UsageError when something asked for is not in the kernel."""
        from timmy_magic.context import ContextError, build_context

        try:
            return build_context(self.shell, prompt, cells=opts.cells, names=opts.names,
                                 error=opts.error, system=system)
        except ContextError as exc:
            raise UsageError(str(exc)) from None

    def ask(self, ctx: Context, opts: CellOptions, key: str, prompt: str,
            then: Callable[[Result], tuple[str, ...]] | None = None) -> Result | None:
        """Send ``ctx`` (the prompt with its context, masked) as ``opts`` say, show the
        answer, keep it. ``then`` may act on a complete answer and return notes."""
        from timmy_magic.cache import ReplayMiss
        from timmy_magic.notebook.cached import REPLAY_HINTS

        vision = self._vision(ctx, opts) and not (opts.providers or opts.models)
        ctx = self._fit(ctx, opts, vision)
        if (opts.providers or opts.models) and not opts.show_context:
            self.side_by_side(ctx, opts, key, prompt)
            return None
        if opts.show_context:
            display({"text/markdown": ctx.render_markdown(), "text/plain": ctx.prompt_text()},
                    raw=True)
            return None
        if opts.new:
            self.conversation.reset()
        earlier = self.conversation.context(key) if opts.chat else ()
        messages = tuple(m for m in ctx.as_messages() if m.role == "system") + earlier + (
            Message("user", self._user_content(ctx, vision)),)
        try:
            req = ChatRequest(messages, opts.model, opts.temperature, opts.max_tokens,
                              opts.provider, opts.schema)
        except InvalidRequest as exc:  # e.g. a lone surrogate interpolated from a variable
            raise UsageError(str(exc)) from None
        view = self._view(opts)
        notes = self._context_notes(ctx, opts, vision)
        fields, mode = self.answers.fields(req, opts.fmt, opts.cache)
        try:
            hit = self.answers.lookup(fields, mode, req.schema)
        except ReplayMiss as exc:
            view.fail(ErrorBlock("replay: no recorded answer", str(exc), (), REPLAY_HINTS))
            return None
        interrupted = False
        if hit is None:
            try:
                result, interrupted = self._answer(req, opts, view)
            except RoutingError as exc:
                view.fail(describe_failure(exc, pin_source=opts.pin_source,
                                           gate_reason=self.router.gate().reason,
                                           config_source=self.router.config.source,
                                           model=opts.model,
                                           held_back=self.router.config.held_back))
                return None
        else:
            result = hit
        result = dataclasses.replace(result, context=tuple(ctx.rows()))
        self._keep(result, opts, key, prompt)
        if hit is None and not interrupted:
            self.answers.record(fields, result, mode)
        if then is not None and result.ok and not interrupted:
            notes += then(result)
        view.finish(Final(result, opts.fmt,
                          self._format_notes(result, opts) + notes, opts.trace))  # + result.notes: render
        if interrupted:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answer ({len(result.text)} "
                                    "chars) is kept: timmy_magic.last()")
        return result

    def side_by_side(self, ctx: Context, opts: CellOptions, key: str, prompt: str) -> None:
        """One prompt to several providers or models at once, in columns."""
        from timmy_magic.cache import ReplayMiss
        from timmy_magic.compare import Column, Comparison, run_columns
        from timmy_magic.notebook.cached import REPLAY_HINTS
        from timmy_magic.notebook.display.compare_view import BlocksView, GridView

        if opts.fmt not in ("markdown", "text") and opts.schema is None:
            raise UsageError(f"-f {opts.fmt} does not apply side by side (markdown or text)")
        columns = (tuple(Column(p, p, opts.model) for p in opts.providers) if opts.providers
                   else tuple(Column(m, opts.provider, m) for m in opts.models))
        if opts.new:
            self.conversation.reset()
        earlier = self.conversation.context(key) if opts.chat else ()
        messages = tuple(m for m in ctx.as_messages() if m.role == "system") + earlier + (
            Message("user", ctx.prompt_text()),)
        try:
            reqs = [ChatRequest(messages, c.model, opts.temperature, opts.max_tokens,
                                c.provider, opts.schema) for c in columns]
        except InvalidRequest as exc:
            raise UsageError(str(exc)) from None
        view = (GridView(columns, self.settings.updates_per_second, live=opts.stream)
                if rich_frontend(self.shell, self.settings.display_mode)
                else BlocksView(columns, live=False))
        keyed = [self.answers.fields(r, opts.fmt, opts.cache) for r in reqs]
        hits: dict[int, Result] = {}
        try:
            for i, (fields, mode) in enumerate(keyed):
                hit = self.answers.lookup(fields, mode, reqs[i].schema)
                if hit is not None:
                    hits[i] = hit
        except ReplayMiss as exc:
            view.start(time.monotonic())
            display(ErrorBlock("replay: no recorded answer", str(exc), (),
                               REPLAY_HINTS).bundle(), raw=True)
            return
        live = [i for i in range(len(columns)) if i not in hits]
        clock = time.monotonic
        t0 = clock()
        if live:  # all from the cache: one display, the final one (no placeholder)
            view.start(t0)
        for i, hit in hits.items():
            view.done(i, hit)
        got: list[Result] = []
        errors: dict[str, str] = {}
        interrupted = False
        if live:
            events = self.router.stream_many([reqs[i] for i in live],
                                             tick_every=0.05 if opts.stream else None)
            try:
                got, errors, interrupted = run_columns(
                    events, _Remap(view, live), tuple(columns[i] for i in live), clock, t0)
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        by_index = dict(zip(live, got))
        results = [hits[i] if i in hits else by_index[i] for i in range(len(columns))]
        for i in live:
            if not interrupted and results[i].ok:
                self.answers.record(keyed[i][0], results[i], keyed[i][1])

        def keep_turn(res: Result) -> None:
            self.conversation.record(Turn(key, prompt, res.text, res.provider))

        comparison = Comparison(columns, results, errors,
                                keep_turn=keep_turn if opts.chat else None)
        self.last_result = comparison
        if opts.out:
            self.shell.user_ns[opts.out] = comparison
        notes: tuple[str, ...] = (ctx.note(),) if ctx.note() else ()
        if opts.chat:
            notes += ("--chat: continue with one answer: "  # noqa: ISC004
                      f"{opts.out or 'timmy_magic.last()'}.keep('{columns[0].label}')",)
        view.finish(comparison, notes)
        if interrupted:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answers are kept: "
                                    "timmy_magic.last()")

    def _fit(self, ctx: Context, opts: CellOptions, vision: bool = False) -> Context:
        """Cut the context to the model's window (``context_window`` in providers.yaml,
        else what its server reported) minus the answer's room; no cut when no window is
        known. ``vision``: images go as images (they count by their size)."""
        window = self._window(opts, vision)
        if window is None or not ctx.items:
            return ctx
        room = opts.max_tokens or self.router.config.cascade.default_max_tokens or 0
        return ctx.fit(max(window - room, 256), vision=vision)

    def _window(self, opts: CellOptions, vision: bool = False) -> int | None:
        """The pinned provider's model window, else the smallest window of the enabled
        providers' models (the cascade may end on any of them; with ``vision``, only on
        those that can see images)."""
        names = [opts.provider] if opts.provider else [
            p.name for p in self.router.config.providers if p.enabled and (
                not vision or "vision" in self.router.capabilities(p.name, opts.model))]
        windows = [w for n in names if (w := self.router.context_window(n, opts.model))]
        return min(windows) if windows else None

    def _vision(self, ctx: Context, opts: CellOptions) -> bool:
        """Send the context's images as images? Pinned: yes (a provider whose model cannot
        see them is then a clear error); else if some provider the cascade may use has a
        model with ``vision`` (the others are skipped). Otherwise each image goes as its
        text description."""
        if not ctx.needs_vision:
            return False
        if opts.provider:
            return True
        local_only = self.router.local_only
        return any("vision" in self.router.capabilities(p.name, opts.model)
                   for p in self.router.config.providers
                   if p.enabled and not (local_only and p.is_cloud))

    @staticmethod
    def _user_content(ctx: Context, vision: bool) -> str | tuple[TextPart | ImagePart, ...]:
        if not vision:
            return ctx.prompt_text()
        return (TextPart(ctx.prompt_text(vision=True)), *(i.part() for i in ctx.images))

    def _context_notes(self, ctx: Context, opts: CellOptions, vision: bool) -> tuple[str, ...]:
        notes = [ctx.note()] if ctx.note() else []
        if ctx.images and not vision:
            notes.append(f"{count(len(ctx.images), 'image')} sent as a text description: no "
                         "provider here has a model with capabilities: [vision]")
        cut = ctx.dropped or any(i.cut for i in ctx.items)
        if cut and ctx.budget is not None and opts.provider:
            window = self.router.context_window(opts.provider, opts.model)
            notes.append(f"context cut to fit {opts.provider}'s context window "
                         f"({window:,} tokens, less the answer's room)")
        return tuple(notes)

    def _view(self, opts: CellOptions) -> View:
        if rich_frontend(self.shell, self.settings.display_mode):
            return NotebookView(opts.fmt, self.settings.updates_per_second, live=opts.stream)
        return TerminalView(live=opts.stream)

    def _events(self, req: ChatRequest, live: bool) -> Iterator[Event | Tick]:
        ups = self.settings.updates_per_second
        if not live or ups <= 0:
            return self.router.stream(req, cache=False)  # looked up already (self.answers)
        every = min(max(1.0 / ups, 0.02), 0.5)
        return self.router.stream(req, tick_every=every, cache=False)

    def _answer(self, req: ChatRequest, opts: CellOptions,
                view: View) -> tuple[Result, bool]:
        """Stream the answer into ``view``; on KeyboardInterrupt, the partial answer."""
        clock = time.monotonic
        got = self.active = AnswerCollector(clock())
        view.start(got.t0)
        events = self._events(req, opts.stream and isinstance(view, NotebookView))
        try:
            return consume(events, view, got, clock), False
        except KeyboardInterrupt:
            if got.result is not None:
                return got.result, True
            return got.partial(INTERRUPTED, self._model_of(req, got.provider), clock()), True
        finally:
            close = getattr(events, "close", None)  # cancels the stream if still open
            if close is not None:
                close()
            self.active = None

    def _model_of(self, req: ChatRequest, provider: str | None) -> str:
        if req.model:
            return req.model
        with suppress(UnknownProvider):
            if provider and (name := self.router.provider(provider).cfg.default_model):
                return name
        return "(model unknown)"

    def _keep(self, result: Result, opts: CellOptions, key: str, prompt: str) -> None:
        """Store the result everywhere it belongs, before anything is displayed."""
        self.last_result = result
        if opts.out:
            self.shell.user_ns[opts.out] = result
        if opts.chat and result.text:
            self.conversation.record(Turn(key, prompt, result.text, result.provider))

    def _format_notes(self, result: Result, opts: CellOptions) -> tuple[str, ...]:
        if opts.fmt == "code":
            if result.error or not result.text.strip():
                return ("the answer is incomplete: no cell was inserted",)
            self.shell.set_next_input(extract_code(result.text), replace=False)
            return ("code inserted into a new cell below",)
        if opts.fmt == "json" and opts.schema is None:
            try:
                parse_json(result.text)
            except JSONAnswerError as exc:
                return (str(exc),)
        return ()

    # ------------------------------------------------------------------ objects

    def panel(self) -> Any:
        from timmy_magic.notebook.display.widget import panel as make_panel

        widget = make_panel(self.router)
        self.panels.append(widget)
        return widget

    def close(self) -> None:
        """Close the panels, the cache and the router (its loop thread)."""
        for widget in self.panels:
            with suppress(Exception):
                widget.close()
        self.panels.clear()
        self.answers.close()
        self.router.close()


class _Remap:
    """A GridView seen by ``run_columns`` over only the columns that stream live: its
    column ``j`` is the grid's column ``live[j]`` (cached columns are filled already)."""

    def __init__(self, view: Any, live: list[int]) -> None:
        self.view, self.live = view, live

    def event(self, j: int, ev: Any, now: float) -> None:
        self.view.event(self.live[j], ev, now)

    def done(self, j: int, result: Result) -> None:
        self.view.done(self.live[j], result)

    def tick(self, now: float) -> None:
        self.view.tick(now)

