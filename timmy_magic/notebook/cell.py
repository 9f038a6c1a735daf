"""``%%llm``: parse the options, interpolate, ask through the router, show the answer.

One ``TimmyMagics`` per shell owns the router (built by ``extension.load``), the
conversation memory and the last result; ``%llm`` lines go to ``commands``. Magics stay
synchronous: streams are consumed from the router's loop thread through
``Runner.iterate``; a kernel interrupt stops the stream, closes the connection and keeps
the partial answer.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Enum, Float, Int, Unicode

from timmy_magic.cache import ReplayMiss
from timmy_magic.context import Context, ContextError, build_context
from timmy_magic.model.errors import InvalidRequest, RoutingError, UnknownProvider
from timmy_magic.notebook.failures import ErrorBlock, describe_failure
from timmy_magic.model.schema import JSONAnswerError, parse_json
from timmy_magic.text.formats import FORMATS, Format, extract_code
from timmy_magic.notebook.history import Conversation, Turn, source_key
from timmy_magic.model.template import InterpolationError, interpolate, references
from timmy_magic.text.markup import shorten
from timmy_magic.context.kernel import remember_error
from timmy_magic.notebook.render import (
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
from timmy_magic.routing.router import Router
from timmy_magic.routing.runner import Tick
from timmy_magic.model.schema import Schema
from timmy_magic.model.chat import ChatRequest, Event, ImagePart, Message, Result, TextPart
from timmy_magic.notebook.cached import REPLAY_HINTS, CellCache
from timmy_magic.notebook.commands import LineCommands

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from timmy_magic.batch import MapResult
    from timmy_magic.compare import Comparison

F = TypeVar("F", bound=Callable[..., Any])
_MA: Any = _magic_arguments  # untyped in IPython


class _Decorator(Protocol):
    def __call__(self, fn: F, /) -> F: ...


def _decorator(made: Any) -> _Decorator:
    return cast(_Decorator, made)


def argument(*names: str, **kw: Any) -> _Decorator:
    """``magic_arguments.argument``, typed."""
    return _decorator(_MA.argument(*names, **kw))


INTERRUPTED = USER_INTERRUPT


class StreamInterrupted(KeyboardInterrupt):
    """Raised once an interrupted cell has shown and stored its partial answer: the cell
    still counts as interrupted (a Run All stops there), shown as one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"StreamInterrupted: {self}"]


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


@magics_class
class TimmyMagics(Magics):
    """Settings: ``%config TimmyMagics.<name> = value`` (or ``c.TimmyMagics`` in a config)."""

    default_provider = Unicode(None, allow_none=True, help="Provider every cell is pinned "
                               "to unless it passes -p (None: the cascade chooses).").tag(
                                   config=True)
    default_model = Unicode(None, allow_none=True, help="Model asked for unless -m.").tag(
        config=True)
    default_format = Enum(FORMATS, default_value="markdown", help="Output format unless -f.")\
        .tag(config=True)
    updates_per_second = Float(20.0, min=0.0, help="Most live display updates per second "
                               "while streaming (0: only the final render).").tag(config=True)
    max_tokens = Int(None, allow_none=True, help="Default --max-tokens.").tag(config=True)
    temperature = Float(None, allow_none=True, help="Default --temperature.").tag(config=True)
    show_trace = Bool(False, help="Show the route trace under every answer.").tag(config=True)
    display_mode = Enum(("auto", "rich", "terminal"), default_value="auto",
                        help="auto: live display in a notebook, tokens on stdout in a "
                        "terminal.").tag(config=True)

    def __init__(self, shell: InteractiveShell, router: Router) -> None:
        super().__init__(shell=shell)
        self.ip = shell
        self.router = router
        self.conversation = Conversation()
        self.last_result: Result | Comparison | MapResult | None = None
        """The last answer (a ``Comparison`` after a side-by-side cell, a ``MapResult``
        after ``timmy_magic.map``)."""
        self._cell_id: str | None = None
        self.active: AnswerCollector | None = None
        """What the stream in progress has delivered so far (None between cells)."""
        self._panels: list[Any] = []
        self.commands = LineCommands(self)
        self.answers = CellCache(self)

    # ------------------------------------------------------------------ %%llm

    @_decorator(_MA.magic_arguments())
    @argument("-p", "--provider", metavar="NAME", help="pin this cell to one provider")
    @argument("-m", "--model", metavar="NAME", help="model to ask for")
    @argument("-s", "--system", metavar="TEXT", help="system prompt (quote it)")
    @argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature")
    @argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    @argument("-f", "--format", choices=FORMATS, metavar="FMT",
              help="markdown | text | code (into a new cell below) | json | html")
    @argument("-o", "--out", metavar="VAR", help="store the result object in VAR")
    @argument("--schema", metavar="NAME", help="the answer must match NAME, a pydantic "
              "model class or a JSON-schema dict in the kernel (implies -f json; VAR.data "
              "holds the validated value)")
    @argument("--no-stream", action="store_true", help="show the answer only when complete")
    @argument("--chat", action="store_true", help="remember this exchange (conversation)")
    @argument("--new", action="store_true", help="start a new conversation with this cell")
    @argument("--no-interpolate", action="store_true", help="send {braces} as written")
    @argument("--trace", action="store_true", help="show the route trace")
    @argument("--cells", metavar="N|A:B", help="the previous N code cells (or execution "
              "counts A to B), with their outputs, as context")
    @argument("--vars", metavar="a,b", help="summaries of these kernel variables as context "
              "(DataFrames, arrays, figures...)")
    @argument("--error", action="store_true", help="the last exception as context")
    @argument("--show-context", action="store_true", help="show what would be sent; send "
              "nothing")
    @argument("--cache", dest="cache", action="store_const", const=True, default=None,
              help="answer from the answer cache if recorded, else ask and record")
    @argument("--no-cache", dest="cache", action="store_const", const=False,
              help="ask live, whatever the cache mode (even replay)")
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> Any:
        """Ask a model, or run a command.

        Cell:  %%llm [options]  then the prompt; {name}, {obj.attr}, {seq[0]} are replaced
               by kernel variables ({{ and }} for literal braces).
        Line:  %llm status | providers | pin NAME | unpin | local-only [on|off] |
               reload [PATH] | trust [PATH] | untrust [PATH] | history | reset |
               start NAME | stop NAME | panel | bench ... | help (%llm COMMAND --help)
        """
        if cell is None:
            return self.commands.run(line)
        self._ask(line, cell)
        return None

    @property
    def parser(self) -> Any:
        """The argparse parser of %%llm (made by magic_arguments)."""
        return vars(TimmyMagics)["llm"].parser

    def options(self, line: str) -> tuple[CellOptions, Any]:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse the options: {exc}") from None
        args = self.parser.parse_args(argv)
        if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(
                args.out)):
            raise UsageError(f"-o {args.out}: not a valid Python variable name")
        temperature = args.temperature if args.temperature is not None else self.temperature
        if temperature is not None and not math.isfinite(temperature):
            raise UsageError(f"-t {temperature}: the temperature must be a finite number")
        if temperature is not None and temperature < 0:
            raise UsageError(f"-t {temperature}: the temperature cannot be negative")
        max_tokens = args.max_tokens if args.max_tokens is not None else self.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise UsageError(f"--max-tokens {max_tokens}: must be at least 1")
        providers = _names(args.provider)
        models = _names(args.model)
        if len(providers) > 1 and len(models) > 1:
            raise UsageError("side by side: give several providers (-p a,b) or several "
                             "models (-m x,y), not both")
        for name in providers if len(providers) > 1 else ():
            try:
                self.router.provider(name)
            except UnknownProvider as exc:
                raise UsageError(str(exc)) from None
        if len(providers) > 1:
            args.provider = None
        if len(models) > 1:
            args.model = None
        provider, source = ((args.provider, "option") if args.provider else
                            (self.default_provider, "default") if self.default_provider else
                            (self.router.pinned, "session") if self.router.pinned else
                            (None, None))
        if provider is not None:
            try:
                self.router.provider(provider)
            except UnknownProvider as exc:
                raise UsageError(str(exc)) from None
        schema = self._schema(args.schema)
        if schema is not None and args.format not in (None, "json"):
            raise UsageError(f"--schema {args.schema}: the answer is JSON, so -f "
                             f"{args.format} does not apply (leave -f out, or -f json)")
        fmt = cast(Format, "json" if schema is not None else
                   args.format or self.default_format)
        return CellOptions(provider, source, args.model or self.default_model, temperature,
                           max_tokens, fmt, args.out,
                           not args.no_stream, args.chat or args.new, args.new,
                           not args.no_interpolate, args.trace or self.show_trace,
                           args.cache, args.cells,
                           _var_names(args.vars), args.error, args.show_context,
                           providers if len(providers) > 1 else (),
                           models if len(models) > 1 else (), schema), args

    def _schema(self, name: str | None) -> Schema | None:
        """--schema NAME: the kernel variable NAME made into a Schema, or a one-line
        UsageError naming what is wrong."""
        if name is None:
            return None
        if name not in self.ip.user_ns:
            raise UsageError(f"--schema {name}: no variable {name!r} in the kernel (define a "
                             "pydantic model class or a JSON-schema dict first)")
        try:
            return Schema.of(self.ip.user_ns[name], name=name)
        except InvalidRequest as exc:
            raise UsageError(f"--schema {name}: {exc}") from None

    def _prompt(self, text: str, opts: CellOptions) -> str:
        if not opts.interpolate:
            return text
        try:
            return interpolate(text, self.ip.user_ns)
        except InterpolationError as exc:
            raise UsageError(str(exc)) from None

    def _ask(self, line: str, cell: str) -> None:
        opts, args = self.options(line)
        prompt = self._prompt(cell, opts).strip()
        if not prompt:
            raise UsageError("the cell has no prompt: write it below the %%llm line")
        system = self._prompt(args.system, opts) if args.system else None
        try:
            ctx = build_context(self.ip, prompt, cells=opts.cells, names=opts.names,
                                error=opts.error, system=system)
        except ContextError as exc:
            raise UsageError(str(exc)) from None
        self.ask(ctx, opts, self._cell_key(line, cell), prompt)

    def ask(self, ctx: Context, opts: CellOptions, key: str, prompt: str,
            then: Callable[[Result], tuple[str, ...]] | None = None) -> Result | None:
        """Send ``ctx`` (the prompt with its context, masked) as ``opts`` say, show the
        answer, keep it. ``then`` may act on a complete answer and return notes."""
        vision = self._vision(ctx, opts) and not (opts.providers or opts.models)
        ctx = self._fit(ctx, opts, vision)
        if (opts.providers or opts.models) and not opts.show_context:
            self._side_by_side(ctx, opts, key, prompt)
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
                                           model=opts.model))
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

    def _side_by_side(self, ctx: Context, opts: CellOptions, key: str, prompt: str) -> None:
        """One prompt to several providers or models at once, in columns."""
        from timmy_magic.compare import Column, Comparison, run_columns
        from timmy_magic.notebook.compare_view import BlocksView, GridView

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
        rich = self.display_mode == "rich" or (self.display_mode == "auto"
                                               and rich_frontend(self.ip))
        view = (GridView(columns, self.updates_per_second, live=opts.stream) if rich
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
            self.ip.user_ns[opts.out] = comparison
        notes: tuple[str, ...] = (ctx.note(),) if ctx.note() else ()
        if opts.chat:
            notes += ("--chat: continue with one answer: "
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
            notes.append(f"{len(ctx.images)} image(s) sent as a text description: no "
                         "provider here has a model with capabilities: [vision]")
        cut = ctx.dropped or any(i.cut for i in ctx.items)
        if cut and ctx.budget is not None and opts.provider:
            window = self.router.context_window(opts.provider, opts.model)
            notes.append(f"context cut to fit {opts.provider}'s context window "
                         f"({window:,} tokens, less the answer's room)")
        return tuple(notes)

    def _view(self, opts: CellOptions) -> View:
        mode = self.display_mode
        if mode == "auto":
            mode = "rich" if rich_frontend(self.ip) else "terminal"
        if mode == "rich":
            return NotebookView(opts.fmt, self.updates_per_second, live=opts.stream)
        return TerminalView(live=opts.stream)

    def _events(self, req: ChatRequest, live: bool) -> Iterator[Event | Tick]:
        ups = self.updates_per_second
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
            self.ip.user_ns[opts.out] = result
        if opts.chat and result.text:
            self.conversation.record(Turn(key, prompt, result.text, result.provider))

    def _format_notes(self, result: Result, opts: CellOptions) -> tuple[str, ...]:
        if opts.fmt == "code":
            if result.error or not result.text.strip():
                return ("the answer is incomplete: no cell was inserted",)
            self.ip.set_next_input(extract_code(result.text), replace=False)
            return ("code inserted into a new cell below",)
        if opts.fmt == "json" and opts.schema is None:
            try:
                parse_json(result.text)
            except JSONAnswerError as exc:
                return (str(exc),)
        return ()

    # ------------------------------------------------------------------ cell identity

    def _pre_run_cell(self, info: Any = None) -> None:
        self._cell_id = getattr(info, "cell_id", None)

    def _post_run_cell(self, result: Any = None) -> None:
        self._cell_id = None
        remember_error(self.ip, getattr(result, "error_in_exec", None))

    def _cell_key(self, line: str, cell: str) -> str:
        """Which cell is running: its Jupyter cell id if the front end sent one (so an
        edited cell still replaces its turn), else a hash of its source."""
        if self._cell_id:
            return f"cell:{self._cell_id}"
        kernel = getattr(self.ip, "kernel", None)
        with suppress(Exception):  # the parent message shape varies across ipykernel versions
            cell_id = kernel.get_parent()["metadata"].get("cellId") if kernel else None
            if cell_id:
                return f"cell:{cell_id}"
        return source_key(line, cell)

    # ------------------------------------------------------------------ objects

    def panel(self) -> Any:
        from timmy_magic.notebook.widget import panel as make_panel

        widget = make_panel(self.router)
        self._panels.append(widget)
        return widget

    def close(self) -> None:
        """Undo load(): magics, hooks, configurables, panels, router (its loop thread)."""
        ip = self.ip
        for kind in ("line", "cell"):
            table: dict[str, Any] = ip.magics_manager.magics[kind]
            if getattr(table.get("llm"), "__self__", None) is self:
                del table["llm"]
        if ip.magics_manager.registry.get(type(self).__name__) is self:
            del ip.magics_manager.registry[type(self).__name__]
        for event, fn in (("pre_run_cell", self._pre_run_cell),
                          ("post_run_cell", self._post_run_cell)):
            with suppress(ValueError):
                ip.events.unregister(event, fn)
        configurables: list[Any] = ip.configurables
        if self in configurables:
            configurables.remove(self)
        for widget in self._panels:
            with suppress(Exception):
                widget.close()
        self._panels.clear()
        self.answers.close()
        self.router.close()


def _names(value: str | None) -> tuple[str, ...]:
    """``a,b , c`` -> ("a", "b", "c"); None or "" -> ()."""
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


def _var_names(value: str | None) -> tuple[str, ...]:
    """``--vars a,b``: the names, each one a kernel variable with any ``.attr`` and
    ``[index]`` parts, as a ``{reference}`` in the prompt may be written (``df``,
    ``df.col``, ``d['k']``, ``rows[-1]``); a one-line UsageError for the first that is
    not (``1df``, ``(df)``, ``df.``), before anything is looked up."""
    names = _names(value)
    for name in names:
        if references("{" + name + "}") != [name]:
            raise UsageError(f"--vars {shorten(repr(name), 80)}: not a variable name (write "
                             "a name with any .attribute or [index] parts: df, df.col, "
                             "d['k'], rows[0])")
    return names


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

