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

from ..cache import ReplayMiss
from ..context import Context, ContextError, build_context
from ..notebook import remember_error
from ..errors import InvalidRequest, RoutingError, UnknownProvider
from ..failures import ErrorBlock, describe_failure
from ..formats import FORMATS, Format, JSONAnswerError, extract_code, parse_json
from ..history import Conversation, Turn, source_key
from ..interpolate import InterpolationError, interpolate
from ..render import (
    AnswerCollector,
    Final,
    NotebookView,
    TerminalView,
    View,
    consume,
    display,
    rich_frontend,
)
from ..router import Router
from ..runner import Tick
from ..types import ChatRequest, Event, Message, Result
from .cached import REPLAY_HINTS, CellCache
from .commands import LineCommands

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

F = TypeVar("F", bound=Callable[..., Any])
_MA: Any = _magic_arguments  # untyped in IPython


class _Decorator(Protocol):
    def __call__(self, fn: F, /) -> F: ...


def _decorator(made: Any) -> _Decorator:
    return cast(_Decorator, made)


def argument(*names: str, **kw: Any) -> _Decorator:
    """``magic_arguments.argument``, typed."""
    return _decorator(_MA.argument(*names, **kw))


INTERRUPTED = "interrupted by the user"


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
        self.last_result: Result | None = None
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
        provider, source = ((args.provider, "option") if args.provider else
                            (self.default_provider, "default") if self.default_provider else
                            (self.router.pinned, "session") if self.router.pinned else
                            (None, None))
        if provider is not None:
            try:
                self.router.provider(provider)
            except UnknownProvider as exc:
                raise UsageError(str(exc)) from None
        fmt = cast(Format, args.format or self.default_format)
        return CellOptions(provider, source, args.model or self.default_model, temperature,
                           max_tokens, fmt, args.out,
                           not args.no_stream, args.chat or args.new, args.new,
                           not args.no_interpolate, args.trace or self.show_trace,
                           args.cache, args.cells,
                           tuple(n.strip() for n in (args.vars or "").split(",") if n.strip()),
                           args.error, args.show_context), args

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
        ctx = self._fit(ctx, opts)
        if opts.show_context:
            display({"text/markdown": ctx.render_markdown(), "text/plain": ctx.prompt_text()},
                    raw=True)
            return None
        if opts.new:
            self.conversation.reset()
        earlier = self.conversation.context(key) if opts.chat else ()
        messages = tuple(m for m in ctx.as_messages() if m.role == "system") + earlier + (
            Message("user", ctx.prompt_text()),)
        try:
            req = ChatRequest(messages, opts.model, opts.temperature, opts.max_tokens,
                              opts.provider)
        except InvalidRequest as exc:  # e.g. a lone surrogate interpolated from a variable
            raise UsageError(str(exc)) from None
        view = self._view(opts)
        notes: tuple[str, ...] = (ctx.note(),) if ctx.note() else ()
        fields, mode = self.answers.fields(req, opts)
        try:
            hit = self.answers.lookup(fields, mode)
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
                          self._format_notes(result, opts) + notes + result.notes, opts.trace))
        if interrupted:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answer ({len(result.text)} "
                                    "chars) is kept: timmy_magic.last()")
        return result

    def _fit(self, ctx: Context, opts: CellOptions) -> Context:
        """Cut the context to the model's window (its ``context_window`` in providers.yaml)
        minus the answer's room; no cut when no window is known."""
        window = self._window(opts)
        if window is None or not ctx.items:
            return ctx
        room = opts.max_tokens or self.router.config.cascade.default_max_tokens or 0
        return ctx.fit(max(window - room, 256))

    def _window(self, opts: CellOptions) -> int | None:
        """The pinned provider's model window, else the smallest window of the enabled
        providers' default models (the cascade may end on any of them)."""
        cfgs = ([self.router.provider(opts.provider).cfg] if opts.provider else
                [p for p in self.router.config.providers if p.enabled])
        windows = []
        for cfg in cfgs:
            mc = cfg.model(opts.model or cfg.default_model)
            if mc is not None and mc.context_window:
                windows.append(mc.context_window)
        return min(windows) if windows else None

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
            return self.router.stream(req)
        every = min(max(1.0 / ups, 0.02), 0.5)
        return self.router.stream(req, tick_every=every)

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
        if opts.fmt == "json":
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
        from ..widget import panel as make_panel

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
