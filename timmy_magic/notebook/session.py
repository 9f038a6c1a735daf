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

import ast
import atexit
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from IPython.core.error import UsageError

from timmy_magic.jobs import Job, JobBoard
from timmy_magic.model.chat import ChatRequest, Event, ImagePart, Message, Result, TextPart
from timmy_magic.model.errors import InvalidRequest, RoutingError, UnknownProvider
from timmy_magic.model.schema import JSONAnswerError, Schema, parse_json
from timmy_magic.notebook import tool_cells
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
from timmy_magic.tools import Tool
from timmy_magic.tools.loop import DEFAULT_MAX_ROUNDS

if TYPE_CHECKING:
    from timmy_magic.batch import MapResult
    from timmy_magic.compare import Comparison
    from timmy_magic.context import Context
    from timmy_magic.evals import Evaluation
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
    background: bool = False
    """--bg: return at once with a ``Job``; the answer streams into the cell's output."""
    tools: tuple[Tool, ...] = ()  # --tools f,g, --yes, --max-tool-rounds (tool_cells)
    approve_all: bool = False
    max_tool_rounds: int = DEFAULT_MAX_ROUNDS


class Session:
    """The state of one shell's notebook session, and the one ``ask``."""

    def __init__(self, shell: Any, router: Router, settings: DisplaySettings) -> None:
        self.shell = shell
        self.router = router
        self.settings = settings
        self.conversation = Conversation()
        self.last_result: Result | Comparison | MapResult | Evaluation | None = None
        """The last answer (a ``Comparison`` after a side-by-side cell, a ``MapResult``
        after ``timmy_magic.map``)."""
        self.active: AnswerCollector | None = None
        """What the stream in progress has delivered so far (None between cells)."""
        self.panels: list[Any] = []
        self.jobs = JobBoard()
        """This session's background jobs (``--bg``, ``map(background=True)``)."""
        atexit.register(self.jobs.cancel_all)  # kernel shutdown: no stream left open
        self.always_approved: set[str] = set()  # tools answered "always" (tool_cells)

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
            then: Callable[[Result], tuple[str, ...]] | None = None
            ) -> Result | Job[Any] | None:
        """Send ``ctx`` (the prompt with its context, masked) as ``opts`` say, show the
        answer, keep it. ``then`` may act on a complete answer and return notes. With
        ``opts.background``: return a ``Job`` at once (``notebook.background``)."""
        from timmy_magic.cache import ReplayMiss
        from timmy_magic.notebook.cached import REPLAY_HINTS

        vision = self._vision(ctx, opts) and not (opts.providers or opts.models)
        ctx = self._fit(ctx, opts, vision)
        if (opts.providers or opts.models) and not opts.show_context:
            return self.side_by_side(ctx, opts, key, prompt)
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
                              opts.provider, opts.schema, instruct=ctx.instruct)
        except InvalidRequest as exc:  # e.g. a lone surrogate interpolated from a variable
            raise UsageError(str(exc)) from None
        view = self._view(opts)
        notes = self._context_notes(ctx, opts, vision)
        fields, mode = self.answers.fields(req, opts.fmt, opts.cache)
        if opts.tools:  # each turn is looked up and recorded on its own (tool_cells)
            fields, view = None, tool_cells.view(view, opts, mode)
        try:
            hit = self.answers.lookup(fields, mode, req.schema)
        except ReplayMiss as exc:
            view.fail(ErrorBlock("replay: no recorded answer", str(exc), (), REPLAY_HINTS))
            return None

        def finish(result: Result, interrupted: bool) -> Result:
            result = dataclasses.replace(result, context=tuple(ctx.rows()))
            self._keep(result, opts, key, prompt)
            if hit is None and not interrupted:
                self.answers.record(fields, result, mode)
            extra = notes
            if then is not None and result.ok and not interrupted:
                extra += then(result)
            view.finish(Final(result, opts.fmt, self._format_notes(result, opts) + extra,
                              opts.trace))  # + result.notes: render
            return result

        if opts.background:
            from timmy_magic.notebook.background import start_answer

            return start_answer(self, req, opts, view, hit, finish, prompt, key)
        interrupted = False
        if hit is None:
            try:
                result, interrupted = self._answer(req, opts, view)
            except ReplayMiss as exc:  # a tool turn not recorded
                view.fail(ErrorBlock("replay: no recorded answer", str(exc), (), REPLAY_HINTS))
                return None
            except RoutingError as exc:
                view.fail(self.failure(exc, opts))
                return None
        else:
            result = hit
        result = finish(result, interrupted)
        if interrupted:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answer ({len(result.text)} "
                                    "chars) is kept: timmy_magic.last()")
        return result

    def failure(self, exc: RoutingError, opts: CellOptions) -> ErrorBlock:
        """The block shown when no answer could be had."""
        return describe_failure(exc, pin_source=opts.pin_source,
                                gate_reason=self.router.gate().reason,
                                config_source=self.router.config.source, model=opts.model,
                                held_back=self.router.config.held_back)

    def side_by_side(self, ctx: Context, opts: CellOptions, key: str, prompt: str
                     ) -> Job[Any] | None:
        """One prompt to several providers or models at once, in columns."""
        from timmy_magic.notebook.side_by_side import side_by_side

        outcome = side_by_side(self, ctx, opts, key, prompt)
        if outcome is True:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answers are kept: "
                                    "timmy_magic.last()")
        return outcome if isinstance(outcome, Job) else None

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
        return TerminalView(live=opts.stream and not opts.background)

    def events(self, req: ChatRequest, live: bool) -> Iterator[Event | Tick]:
        """One request's events from the router, ticking for a live view."""
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
        live = opts.stream and isinstance(view, NotebookView)
        events = (tool_cells.events(self, req, opts, live) if opts.tools
                  else self.events(req, live))
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
        """Store the result everywhere it belongs, before anything is displayed (in the
        background, ``-o VAR`` stays the Job: ``VAR.result()`` is this Result)."""
        self.last_result = result
        if opts.out and not opts.background:
            self.shell.user_ns[opts.out] = result
        if opts.chat and result.text:
            self.conversation.record(Turn(key, prompt, result.text, result.provider))

    def _format_notes(self, result: Result, opts: CellOptions) -> tuple[str, ...]:
        if opts.fmt == "code":
            if result.error or not result.text.strip():
                return ("the answer is incomplete: no cell was inserted",)
            return self.propose_cell(extract_code(result.text), "code inserted into a new "
                                     "cell below")
        if opts.fmt == "json" and opts.schema is None:
            try:
                parse_json(result.text)
            except JSONAnswerError as exc:
                return (str(exc),)
        return ()

    def propose_cell(self, code: str, done: str, unchanged: str | None = None,
                     missing: str | None = None) -> tuple[str, ...]:
        """Insert ``code`` as a new cell below, only if it parses (IPython's own syntax,
        ``%magic`` and ``!cmd``, allowed), differs from the failing cell ``unchanged`` and
        no longer uses the ``missing`` name the error was about: the one place an answer
        becomes a cell. The note says what happened and why."""
        problem = not_python(code)
        if problem == "no code":
            return ("the answer holds no code: no cell was inserted",)
        if problem:
            return (f"the proposed code is not valid Python ({problem}): no cell was inserted",)
        if unchanged is not None and code.strip() == unchanged.strip():
            return ("the model proposed the failing cell unchanged: no cell was inserted",)
        if missing and len(missing) > 2 and missing in code and (
                unchanged is None or missing in unchanged):
            why = f"the proposed fix still uses '{missing}', the name the error is about"
            return (f"{why}: no cell was inserted",)
        self.shell.set_next_input(code, replace=False)
        return (done,)

    # ------------------------------------------------------------------ objects

    def panel(self) -> Any:
        from timmy_magic.notebook.display.widget import panel as make_panel

        widget = make_panel(self.router)
        self.panels.append(widget)
        return widget

    def close(self) -> None:
        """Cancel the background jobs (their streams closed), then close the panels, the
        cache and the router (its loop thread)."""
        self.jobs.cancel_all()
        atexit.unregister(self.jobs.cancel_all)
        for widget in self.panels:
            with suppress(Exception):
                widget.close()
        self.panels.clear()
        self.answers.close()
        self.router.close()


def not_python(code: str) -> str:
    """Why ``code`` cannot run as a cell (IPython syntax such as ``%magic`` and ``!cmd``
    lines allowed), "no code" for nothing but blanks and comments, or "" when it parses."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        source = TransformerManager().transform_cell(code)  # type: ignore[no-untyped-call]
        if not ast.parse(source).body:
            return "no code"  # blank, or comments only
        compile(source, "<cell>", "exec")
    except SyntaxError as exc:
        return f"{type(exc).__name__}: {exc.msg}, line {exc.lineno}"
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}"
    return ""
