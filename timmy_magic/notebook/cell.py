"""``%%llm``: the cell magic. It parses the options (``CellOptions``), interpolates the
prompt and calls ``Session.ask``; ``%llm`` lines go to ``commands``.

One ``TimmyMagics`` per shell (made by ``extension.load``) holds the settings
(``%config TimmyMagics.<name>``) and the ``Session``. Magics stay synchronous: the
session consumes streams from the router's loop thread; a kernel interrupt stops the
stream, closes the connection and keeps the partial answer.
"""

from __future__ import annotations

import keyword
import math
import shlex
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Enum, Float, Int, Unicode

from timmy_magic.jobs import Job
from timmy_magic.model.chat import Result
from timmy_magic.model.errors import InvalidRequest, UnknownProvider
from timmy_magic.model.schema import Schema
from timmy_magic.model.template import InterpolationError, interpolate, references
from timmy_magic.notebook.display.render import AnswerCollector
from timmy_magic.notebook.history import Conversation, source_key
from timmy_magic.notebook.session import INTERRUPTED as INTERRUPTED
from timmy_magic.notebook.session import CellOptions, Session
from timmy_magic.notebook.session import StreamInterrupted as StreamInterrupted
from timmy_magic.notebook.tool_cells import cell_tools
from timmy_magic.routing.router import Router
from timmy_magic.text.formats import FORMATS, Format
from timmy_magic.text.markup import shorten
from timmy_magic.tools.loop import DEFAULT_MAX_ROUNDS

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from timmy_magic.batch import MapResult
    from timmy_magic.compare import Comparison
    from timmy_magic.evals import Evaluation
    from timmy_magic.notebook.cached import CellCache
    from timmy_magic.notebook.commands import LineCommands

F = TypeVar("F", bound=Callable[..., Any])
_MA: Any = _magic_arguments  # untyped in IPython


class _Decorator(Protocol):
    def __call__(self, fn: F, /) -> F: ...


def _decorator(made: Any) -> _Decorator:
    return cast(_Decorator, made)


def argument(*names: str, **kw: Any) -> _Decorator:
    """``magic_arguments.argument``, typed."""
    return _decorator(_MA.argument(*names, **kw))


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
    approve_tools = Enum(("ask", "always"), default_value="ask", help="--tools cells: "
                         "ask before each call (through stdin), or run every call.").tag(
                             config=True)
    display_mode = Enum(("auto", "rich", "terminal"), default_value="auto",
                        help="auto: live display in a notebook, tokens on stdout in a "
                        "terminal.").tag(config=True)

    def __init__(self, shell: InteractiveShell, router: Router) -> None:
        super().__init__(shell=shell)
        self.ip = shell
        self.session = Session(shell, router, self)
        self._cell_id: str | None = None
        self._commands: LineCommands | None = None

    # The session's state, as the extension exposes it (``timmy_magic.last()``...).
    @property
    def router(self) -> Router:
        return self.session.router

    @property
    def conversation(self) -> Conversation:
        return self.session.conversation

    @property
    def commands(self) -> LineCommands:
        """The ``%llm`` line commands, built (and imported) on the first ``%llm`` line."""
        if self._commands is None:
            from timmy_magic.notebook.commands import LineCommands

            self._commands = LineCommands(self)
        return self._commands

    @property
    def answers(self) -> CellCache:
        return self.session.answers

    @property
    def last_result(self) -> Result | Comparison | MapResult | Evaluation | None:
        return self.session.last_result

    @last_result.setter
    def last_result(self, value: Result | Comparison | MapResult | Evaluation | None) -> None:
        self.session.last_result = value

    @property
    def active(self) -> AnswerCollector | None:
        return self.session.active

    @property
    def _panels(self) -> list[Any]:
        return self.session.panels

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
    @argument("--tools", metavar="f,g", help="kernel functions the model may call; each "
              "call is shown and approved (y/n/a) before it runs")
    @argument("--yes", action="store_true", help="--tools: run every call of this cell "
              "without asking")
    @argument("--max-tool-rounds", type=int, metavar="N", default=DEFAULT_MAX_ROUNDS,
              help=f"--tools: most rounds of calls (default {DEFAULT_MAX_ROUNDS})")
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
    @argument("--bg", action="store_true", help="run in the background: the cell returns "
              "a Job at once (-o VAR holds it) and the answer streams into its output")
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> Any:
        """Ask a model, or run a command.

        Cell:  %%llm [options]  then the prompt; {name}, {obj.attr}, {seq[0]} are replaced
               by kernel variables ({{ and }} for literal braces).
        Line:  %llm status | providers | pin NAME | unpin | local-only [on|off] |
               reload [PATH] | trust [PATH] | untrust [PATH] | history | reset |
               start NAME | stop NAME | panel | jobs | cancel ID|VAR|all | bench ... |
               eval ... | help (%llm COMMAND --help)
        """
        if cell is None:
            return self.commands.run(line)
        answer = self._ask(line, cell)
        return answer if isinstance(answer, Job) else None  # --bg: Out is the Job

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
        if args.bg and fmt == "code":
            raise UsageError("--bg -f code: the new cell would be inserted wherever you are "
                             "by then; run it in the foreground, or -f markdown and take "
                             "the code from VAR.result().text")
        tools = self._tools(args, schema, len(providers) > 1 or len(models) > 1)
        return CellOptions(provider, source, args.model or self.default_model, temperature,
                           max_tokens, fmt, args.out,
                           not args.no_stream, args.chat or args.new, args.new,
                           not args.no_interpolate, args.trace or self.show_trace,
                           args.cache, args.cells,
                           _var_names(args.vars), args.error, args.show_context,
                           providers if len(providers) > 1 else (),
                           models if len(models) > 1 else (), schema, args.bg, tools,
                           args.yes, args.max_tool_rounds), args

    def _tools(self, args: Any, schema: Schema | None, side_by_side: bool) -> tuple[Any, ...]:
        """--tools f,g as Tools, or a one-line UsageError."""
        if args.max_tool_rounds < 1:
            raise UsageError(f"--max-tool-rounds {args.max_tool_rounds}: must be at least 1")
        if not args.tools:
            if args.yes:
                raise UsageError("--yes approves tool calls: it needs --tools f,g")
            return ()
        if schema is not None:
            raise UsageError("--tools and --schema do not go together: the answer of a "
                             "tool cell is text")
        if side_by_side:
            raise UsageError("--tools does not apply side by side: ask one provider")
        if args.bg:
            raise UsageError("--tools runs in the foreground: each call is approved as it "
                             "comes (leave out --bg)")
        return cell_tools(_names(args.tools), self.ip.user_ns)

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

    def _ask(self, line: str, cell: str) -> Any:
        opts, args = self.options(line)
        prompt = self._prompt(cell, opts).strip()
        if not prompt:
            raise UsageError("the cell has no prompt: write it below the %%llm line")
        system = self._prompt(args.system, opts) if args.system else None
        ctx = self.session.context(prompt, opts, system)
        return self.session.ask(ctx, opts, self._cell_key(line, cell), prompt)

    # ------------------------------------------------------------------ cell identity

    def _pre_run_cell(self, info: Any = None) -> None:
        self._cell_id = getattr(info, "cell_id", None)

    def _post_run_cell(self, result: Any = None) -> None:
        self._cell_id = None
        error = getattr(result, "error_in_exec", None)
        if error is not None:  # reading the context waits for a cell that failed
            from timmy_magic.context.kernel import remember_error

            remember_error(self.ip, error)

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
        return self.session.panel()

    def close(self) -> None:
        """Undo load(): magics, hooks, configurables; then the session (panels, cache,
        router and its loop thread)."""
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
        self.session.close()


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
