"""``%%llm`` (ask) and ``%llm`` (commands): the notebook surface of the router (issue 3).

One ``TimmyMagics`` per shell owns the router (built from providers.yaml at load, health
checks in the background), the conversation memory and the last result. Magics stay
synchronous: streams are consumed from the router's loop thread through
``Runner.iterate``; a kernel interrupt stops the stream, closes the connection and keeps
the partial answer.
"""

from __future__ import annotations

import keyword
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Enum, Float, Int, Unicode

from .config import Config, find_config, load_config
from .errors import ConfigError, RoutingError, UnknownProvider
from .formats import FORMATS, Format, JSONAnswerError, extract_code, parse_json
from .history import Conversation, Turn, source_key
from .interpolate import InterpolationError, interpolate
from .render import (Collector, ErrorBlock, Final, NotebookView, TerminalView, Tick, View,
                     consume, describe_failure, rich_frontend, with_ticks)
from .router import Router
from .tables import providers_bundle, status_bundle
from .types import ChatRequest, Event, Message, Result

INTERRUPTED = "interrupted by the user"
COMMANDS = ("status", "providers", "pin", "unpin", "reload", "history", "reset", "panel",
            "bench", "help")
_EXTENSIONS: weakref.WeakKeyDictionary[Any, TimmyMagics] = weakref.WeakKeyDictionary()
"""The one extension instance per shell."""


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

    def __init__(self, shell: Any, router: Router) -> None:
        super().__init__(shell=shell)
        self.router = router
        self.conversation = Conversation()
        self.last_result: Result | None = None
        self._cell_id: str | None = None
        self.active: Collector | None = None
        """What the stream in progress has delivered so far (None between cells)."""
        self._panels: list[Any] = []

    # ------------------------------------------------------------------ %%llm

    @magic_arguments()
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
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> Any:
        """Ask a model, or run a command.

        Cell:  %%llm [options]  then the prompt; {name}, {obj.attr}, {seq[0]} are replaced
               by kernel variables ({{ and }} for literal braces).
        Line:  %llm status | providers | pin NAME | unpin | reload [PATH] | history |
               reset | panel | bench ... | help
        """
        if cell is None:
            return self._command(line)
        self._ask(line, cell)
        return None

    def _options(self, line: str) -> tuple[CellOptions, Any]:
        args = parse_argstring(self.llm, line)
        if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(
                args.out)):
            raise UsageError(f"-o {args.out}: not a valid Python variable name")
        temperature = args.temperature if args.temperature is not None else self.temperature
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
        return CellOptions(provider, source, args.model or self.default_model, temperature,
                           max_tokens, args.format or self.default_format, args.out,
                           not args.no_stream, args.chat or args.new, args.new,
                           not args.no_interpolate, args.trace or self.show_trace), args

    def _prompt(self, text: str, opts: CellOptions) -> str:
        if not opts.interpolate:
            return text
        try:
            return interpolate(text, self.shell.user_ns)
        except InterpolationError as exc:
            raise UsageError(str(exc)) from None

    def _ask(self, line: str, cell: str) -> None:
        opts, args = self._options(line)
        prompt = self._prompt(cell, opts).strip()
        if not prompt:
            raise UsageError("the cell has no prompt: write it below the %%llm line")
        system = self._prompt(args.system, opts) if args.system else None
        key = self._cell_key(line, cell)
        if opts.new:
            self.conversation.reset()
        earlier = self.conversation.context(key) if opts.chat else ()
        messages = ((Message("system", system),) if system else ()) + earlier + (
            Message("user", prompt),)
        req = ChatRequest(messages, opts.model, opts.temperature, opts.max_tokens,
                          opts.provider)
        view = self._view(opts)
        try:
            result, interrupted = self._answer(req, opts, view)
        except RoutingError as exc:
            view.fail(describe_failure(exc, pin_source=opts.pin_source,
                                       gate_reason=self.router.gate().reason,
                                       config_source=self.router.config.source,
                                       model=opts.model))
            return
        self._keep(result, opts, key, prompt)
        view.finish(Final(result, opts.fmt, self._format_notes(result, opts), opts.trace))
        if interrupted:
            raise StreamInterrupted(f"{INTERRUPTED}; the partial answer ({len(result.text)} "
                                    "chars) is kept: timmy_magic.last()")

    def _view(self, opts: CellOptions) -> View:
        mode = self.display_mode
        if mode == "auto":
            mode = "rich" if rich_frontend(self.shell) else "terminal"
        if mode == "rich":
            return NotebookView(opts.fmt, self.updates_per_second, live=opts.stream)
        return TerminalView(live=opts.stream)

    def _events(self, req: ChatRequest, live: bool) -> Iterator[Event | Tick]:
        ups = self.updates_per_second
        if not live or ups <= 0:
            return self.router.stream(req)
        every = min(max(1.0 / ups, 0.02), 0.5)
        return self.router.runner.iterate(lambda: with_ticks(self.router.astream(req), every))

    def _answer(self, req: ChatRequest, opts: CellOptions,
                view: View) -> tuple[Result, bool]:
        clock = time.monotonic
        got = self.active = Collector(clock())
        view.start(got.t0)
        try:
            with closing(self._events(req, opts.stream and isinstance(view, NotebookView)))\
                    as events:
                return consume(events, view, got, clock), False
        except KeyboardInterrupt:
            if got.result is not None:
                return got.result, True
            return got.partial(INTERRUPTED, self._model_of(req, got.provider), clock()), True
        finally:
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

    def _cell_key(self, line: str, cell: str) -> str:
        """Which cell is running: its Jupyter cell id if the front end sent one (so an
        edited cell still replaces its turn), else a hash of its source."""
        if self._cell_id:
            return f"cell:{self._cell_id}"
        kernel = getattr(self.shell, "kernel", None)
        with suppress(Exception):  # the parent message shape varies across ipykernel versions
            cell_id = kernel.get_parent()["metadata"].get("cellId") if kernel else None
            if cell_id:
                return f"cell:{cell_id}"
        return source_key(line, cell)

    # ------------------------------------------------------------------ %llm commands

    def _command(self, line: str) -> Any:
        name, _, rest = line.strip().partition(" ")
        handlers: dict[str, Callable[[str], Any]] = {
            "status": self._status, "providers": self._providers, "pin": self._pin,
            "unpin": self._unpin, "reload": self._reload, "history": self._history,
            "reset": self._reset, "panel": self._panel, "bench": self._bench,
            "help": self._help, "": self._help, "start": self._not_yet, "stop": self._not_yet,
        }
        handler = handlers.get(name)
        if handler is None:
            raise UsageError(f"unknown command '{name}'; commands: {', '.join(COMMANDS)}. "
                             "To ask a model, start a cell with %%llm.")
        return handler(rest.strip())

    def _status(self, rest: str) -> None:
        if rest not in ("", "--cached"):
            raise UsageError("usage: %llm status [--cached]")
        r = self.router
        reports = r.health() if rest == "--cached" else {**r.health(), **r.check_health()}
        gate = r.gate()
        display(status_bundle(reports, r.metrics(), pinned=r.pinned, gate_open=gate.open,
                              gate_reason=gate.reason, spent_usd=r.ledger.spent_today,
                              budget_usd=r.config.cloud_gate.daily_budget_usd), raw=True)

    def _providers(self, rest: str) -> None:
        display(providers_bundle(self.router.config, self.router.pinned), raw=True)

    def _pin(self, rest: str) -> None:
        if not rest or " " in rest:
            raise UsageError("usage: %llm pin NAME (see %llm providers)")
        try:
            self.router.pin(rest)
        except UnknownProvider as exc:
            raise UsageError(str(exc)) from None
        print(f"Pinned to {rest}: every %%llm cell goes there, with no fallback, "
              "until %llm unpin.")

    def _unpin(self, rest: str) -> None:
        was = self.router.pinned
        self.router.pin(None)
        print(f"Unpinned {was}: the cascade chooses again." if was else
              "Nothing was pinned: the cascade chooses.")

    def _reload(self, rest: str) -> None:
        path = str(find_config(rest or None))
        try:
            cfg = self.router.reload(path)
        except ConfigError as exc:
            old = self.router.config
            display(ErrorBlock("reload failed; the previous config is kept", str(exc), (), (
                f"Still using {len(old.providers)} providers from {old.source}.",
                "Fix the file, then run `%llm reload` again.")).bundle(), raw=True)
            return
        self.router.runner.submit(self.router.acheck_health())
        warn = f"; {len(cfg.warnings)} warnings (%llm providers)" if cfg.warnings else ""
        print(f"Reloaded {len(cfg.providers)} providers from {cfg.source}{warn}.")

    def _history(self, rest: str) -> None:
        display(self.conversation)

    def _reset(self, rest: str) -> None:
        n = self.conversation.reset()
        print(f"Conversation cleared ({n} turns).")

    def _panel(self, rest: str) -> None:
        display(self.panel())

    def _bench(self, rest: str) -> Any:
        try:
            from .bench.magic import bench_line
        except ImportError as exc:
            print(f"bench not available ({exc})")
            return None
        out = bench_line(self, rest)
        if out is not None:
            display(out)
        return None

    def _not_yet(self, rest: str) -> None:
        print("Starting and stopping local servers from the notebook is not yet available: "
              "start the server yourself, then %llm status.")

    def _help(self, rest: str) -> None:
        options = self.llm.parser.format_help().partition("options:\n")[2]
        print(f"{HELP}\nOptions of %%llm:\n{options}")

    # ------------------------------------------------------------------ objects

    def panel(self) -> Any:
        from .panel import panel as make_panel

        widget = make_panel(self.router)
        self._panels.append(widget)
        return widget

    def close(self) -> None:
        """Undo load(): magics, hooks, configurables, panels, router (its loop thread)."""
        ip = self.shell
        for kind in ("line", "cell"):
            table = ip.magics_manager.magics[kind]
            if getattr(table.get("llm"), "__self__", None) is self:
                del table["llm"]
        if ip.magics_manager.registry.get(type(self).__name__) is self:
            del ip.magics_manager.registry[type(self).__name__]
        for event, fn in (("pre_run_cell", self._pre_run_cell),
                          ("post_run_cell", self._post_run_cell)):
            with suppress(ValueError):
                ip.events.unregister(event, fn)
        if self in ip.configurables:
            ip.configurables.remove(self)
        for widget in self._panels:
            with suppress(Exception):
                widget.close()
        self._panels.clear()
        self.router.close()


HELP = """timmy-magic: a cascade of local and cloud LLMs.

  %%llm [options]      ask; the prompt is the rest of the cell
  %llm status [--cached]  health of every provider (probes now unless --cached)
  %llm providers       what providers.yaml configures
  %llm pin NAME        send every cell to NAME (no fallback); %llm unpin to undo
  %llm reload [PATH]   re-read providers.yaml (a bad file keeps the current config)
  %llm history         the --chat conversation; %llm reset clears it
  %llm panel           the provider panel (widgets)
  %llm bench ...       benchmarks
Settings: %config TimmyMagics (default_provider, default_model, default_format,
updates_per_second, max_tokens, temperature, show_trace, display_mode).
The last result: timmy_magic.last(); the router: timmy_magic.router().
"""


# ---------------------------------------------------------------------- load / unload


def _build_router() -> tuple[Router, str]:
    """The router from providers.yaml; a bad file gives an empty router and one line."""
    path = find_config()
    try:
        config = load_config(path)
    except ConfigError as exc:
        return Router(Config(source=str(path))), (
            f"timmy-magic: {exc} (loaded with no providers: fix it, then %llm reload)")
    enabled = sum(p.enabled for p in config.providers)
    warn = f", {len(config.warnings)} warnings" if config.warnings else ""
    return Router(config), (f"timmy-magic: {len(config.providers)} providers ({enabled} "
                            f"enabled{warn}) from {config.source} (health checks running "
                            "in background)")


def load(ip: Any) -> TimmyMagics:
    old = _EXTENSIONS.pop(ip, None)
    if old is not None:
        old.close()
    router, message = _build_router()
    ext = TimmyMagics(ip, router)
    ip.register_magics(ext)
    ip.events.register("pre_run_cell", ext._pre_run_cell)
    ip.events.register("post_run_cell", ext._post_run_cell)
    _EXTENSIONS[ip] = ext
    router.start_health_loop()
    print(message)
    return ext


def unload(ip: Any) -> None:
    ext = _EXTENSIONS.pop(ip, None)
    if ext is not None:
        ext.close()


def extension(ip: Any = None) -> TimmyMagics:
    """The extension loaded in ``ip`` (default: the running shell)."""
    if ip is None:
        from IPython import get_ipython

        ip = get_ipython()
    ext = _EXTENSIONS.get(ip) if ip is not None else None
    if ext is None:
        raise RuntimeError("timmy_magic is not loaded here: run %load_ext timmy_magic")
    return ext


def last() -> Result | None:
    """The last %%llm result of this shell (partial if it was interrupted), or None."""
    return extension().last_result


def router() -> Router:
    """The router shared by %%llm, the panel and %llm bench."""
    return extension().router


def panel() -> Any:
    """A provider panel (ipywidgets) over this shell's router."""
    return extension().panel()

