"""The ``%llm`` line commands, each a subcommand with a real parser (``%llm help``,
``%llm NAME --help``): user mistakes are ``UsageError`` one-liners naming the command and
its usage, expected failures one readable block."""

from __future__ import annotations

import argparse
import importlib
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from timmy_magic.config import find_config, found_by_search, load_config, trust_reason
from timmy_magic.config import trust as trust
from timmy_magic.jobs import UnknownJob
from timmy_magic.model.errors import ConfigError, UnknownProvider
from timmy_magic.notebook.args import HelpShown, UsageParser
from timmy_magic.notebook.display.failures import ErrorBlock
from timmy_magic.notebook.display.render import display
from timmy_magic.notebook.display.tables import jobs_bundle, providers_bundle, status_bundle
from timmy_magic.servers.launch import LaunchError
from timmy_magic.text.markup import count

if TYPE_CHECKING:
    from timmy_magic.notebook.cell import TimmyMagics

OWN_PARSERS = {"bench": "serving benchmarks", "eval": "evaluate providers on rows"}
"""Lines that parse themselves: ``magics.<module>.<NAME>_line`` (``OWN_MODULES``)."""
OWN_MODULES = {"bench": "bench", "eval": "evaluate"}
START_HINT = "`%llm status` shows its state; check its `launch:` section in providers.yaml."


Handler = Callable[[argparse.Namespace], Any]


class LineCommands:
    """``%llm COMMAND ...``: one parser per command, built once per extension."""

    def __init__(self, ext: TimmyMagics) -> None:
        self.ext = ext
        self.parser = self._build()

    def _build(self) -> UsageParser:
        root = UsageParser(prog="%llm", add_help=False,
                           description="timmy-magic: a cascade of local and cloud LLMs.")
        subs = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)

        def add(name: str, handler: Handler, summary: str) -> UsageParser:
            sub: UsageParser = subs.add_parser(name, help=summary, description=summary,
                                               prog=f"%llm {name}")
            sub.set_defaults(handler=handler)
            return sub

        add("status", self._status, "health of every provider (probes now)").add_argument(
            "--cached", action="store_true", help="show the last known health, probe nothing")
        add("providers", self._providers, "what providers.yaml configures")
        add("pin", self._pin, "send every cell to NAME, with no fallback").add_argument(
            "name", metavar="NAME", help="a provider (see %%llm providers)")
        add("unpin", self._unpin, "let the cascade choose again")
        add("local-only", self._local_only, "keep cloud providers out (the cloud gate)"
            ).add_argument("mode", nargs="?", choices=("on", "off"), metavar="on|off")
        add("reload", self._reload, "re-read providers.yaml (a bad file keeps the current "
            "config)").add_argument("path", nargs="?", metavar="PATH",
                                    help="this file (trusted: you named it)")
        t = add("trust", self._trust, "trust a providers.yaml found in the working dir "
                "(its launch, quota, ${VARS})")
        t.add_argument("path", nargs="?", metavar="PATH", help="default: the file in use")
        t.add_argument("--list", action="store_true", help="the trusted files")
        add("untrust", self._untrust, "forget a trusted file").add_argument(
            "path", nargs="?", metavar="PATH", help="default: the file in use")
        add("cache", self._cache, "the answer cache: on, off, replay (answers only from "
            "it), clear, stats").add_argument(
                "action", nargs="?", choices=("on", "off", "replay", "clear", "stats"),
                default="stats", metavar="on|off|replay|clear|stats")
        fix = add("fix", self._fix, "propose a fix of the last failing cell, as a new cell "
                  "below")
        fix.add_argument("options", nargs=argparse.REMAINDER,
                         help="%%llm options (-p, -m, -t, --max-tokens, --show-context...)")
        explain = add("explain", self._explain, "explain the last error (no code)")
        explain.add_argument("options", nargs=argparse.REMAINDER, help="%%llm options")
        add("history", self._history, "the --chat conversation")
        add("reset", self._reset, "clear the --chat conversation")
        add("start", self._start, "start a managed local server (launch: in providers.yaml)"
            ).add_argument("name", metavar="NAME")
        add("stop", self._stop, "stop a server started from here").add_argument(
            "name", metavar="NAME")
        add("panel", self._panel, "the provider panel (widgets)")
        add("jobs", self._jobs, "this session's background jobs (--bg, map(background=True))")
        add("cancel", self._cancel, "stop background jobs, keeping their partial answers"
            ).add_argument("which", metavar="ID|VAR|all", help="a job number, the variable "
                           "it was bound to (-o), or all")
        for name, summary in OWN_PARSERS.items():  # each parses its line itself
            own = subs.add_parser(name, help=f"{summary} (%llm {name} --help)",
                                  add_help=False, prog=f"%llm {name}")
            own.add_argument("rest", nargs=argparse.REMAINDER)
            own.set_defaults(handler=lambda a, n=name: self._own_line(n, shlex.join(a.rest)))
        add("help", self._help, "this help")
        return root

    def run(self, line: str) -> Any:
        name, _, rest = line.strip().partition(" ")
        if name in OWN_PARSERS:  # its own parser: every argument goes to it as written
            return self._own_line(name, rest.strip())
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%llm: cannot parse {line.strip()!r}: {exc}") from None
        if not argv:
            argv = ["help"]
        if argv[0] not in self.commands():
            raise UsageError(f"unknown command '{argv[0]}'; commands: "
                             f"{', '.join(self.commands())}. To ask a model, start a cell "
                             "with %%llm.")
        if argv[0] in ("fix", "explain") and "-h" not in argv and "--help" not in argv:
            # the %%llm options, parsed by the %%llm parser
            return self._subparsers().choices[argv[0]].get_default("handler")(
                argparse.Namespace(options=argv[1:]))
        try:  # the command's own parser: its errors name it and its usage
            args = self._subparsers().choices[argv[0]].parse_args(argv[1:])
        except HelpShown:
            return None
        return args.handler(args)

    def _subparsers(self) -> argparse._SubParsersAction[UsageParser]:
        return next(a for a in self.parser._actions
                    if isinstance(a, argparse._SubParsersAction))

    def commands(self) -> list[str]:
        return list(self._subparsers().choices)

    def _status(self, args: argparse.Namespace) -> None:
        r = self.ext.router
        reports = r.health() if args.cached else {**r.health(), **r.check_health()}
        gate = r.gate()
        display(status_bundle(reports, r.metrics(), pinned=r.pinned, gate_open=gate.open,
                              gate_reason=gate.reason, spent_usd=r.ledger.spent_today,
                              budget_usd=r.config.cloud_gate.daily_budget_usd), raw=True)

    def _providers(self, args: argparse.Namespace) -> None:
        display(providers_bundle(self.ext.router.config, self.ext.router.pinned), raw=True)

    def _pin(self, args: argparse.Namespace) -> None:
        self.ext.router.pin(self._known(args.name))
        print(f"Pinned to {args.name}: every %%llm cell goes there, with no fallback, "
              "until %llm unpin.")

    def _unpin(self, args: argparse.Namespace) -> None:
        was = self.ext.router.pinned
        self.ext.router.pin(None)
        print(f"Unpinned {was}: the cascade chooses again." if was else
              "Nothing was pinned: the cascade chooses.")

    def _reload(self, args: argparse.Namespace) -> None:
        # a path the user names is trusted (as an explicit load_config path); the file the
        # search finds is not, unless trusted otherwise
        self._reload_file(find_config(args.path or None), named=bool(args.path))

    def _reload_file(self, path: Path, *, named: bool) -> None:
        try:
            if named:
                cfg = self.ext.router.reload(str(path))
            else:
                with found_by_search():
                    cfg = self.ext.router.reload(str(path))
        except ConfigError as exc:
            old = self.ext.router.config
            display(ErrorBlock("reload failed; the previous config is kept", str(exc), (), (
                f"Still using {count(len(old.providers), 'provider')} from {old.source}.",
                "Fix the file, then run `%llm reload` again.")).bundle(), raw=True)
            return
        self.ext.router.check_health_soon()
        warn = f"; {len(cfg.warnings)} warnings (%llm providers)" if cfg.warnings else ""
        print(f"Reloaded {count(len(cfg.providers), 'provider')} from {cfg.source}{warn}.")
        if cfg.held_back_line:
            print(cfg.held_back_line)

    def _trust(self, args: argparse.Namespace) -> None:
        """``%llm trust [PATH]``: record the file's hash, then load it with everything it
        asks for; ``%llm trust --list``: the trusted files and whether they still match."""
        if args.list:
            rows = trust.entries()
            if not rows:
                print(f"No file is trusted with %llm trust (store: {trust.store_path()}).")
            for e in rows:
                print(f"{e.status():8} {e.path}  (sha256 {e.sha256[:12]}…, {e.trusted_at})")
            return
        path = self._config_path(args.path, "trust")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        already = trust_reason(path, data)
        if already and already != "trusted with %llm trust":
            print(f"{path} needs no trust: it is {already}.")
            return
        try:
            preview = load_config(path, named=True)  # validate before trusting it
        except ConfigError as exc:
            raise UsageError(f"not trusted: {exc}") from None
        try:
            entry = trust.trust(path, data)
        except OSError as exc:
            raise UsageError(f"cannot write the trust store {trust.store_path()}: "
                             f"{exc.strerror}") from None
        runs = [f"launch of '{p.name}'" for p in preview.providers if p.launch is not None]
        quota = preview.cloud_gate.quota
        if quota is not None and (quota.command or quota.callable):
            runs.append("the quota " + ("command" if quota.command else "callable"))
        print(f"Trusted {entry.path} (sha256 {entry.sha256[:12]}…)"
              + (f"; it may now run: {', '.join(runs)}" if runs else "")
              + ". A changed file needs %llm trust again; %llm untrust forgets it.")
        if self._in_use(path):
            self._reload_file(path, named=False)

    def _untrust(self, args: argparse.Namespace) -> None:
        path = self._config_path(args.path, "untrust")
        try:
            forgot = trust.untrust(path)
        except OSError as exc:
            raise UsageError(f"cannot write the trust store {trust.store_path()}: "
                             f"{exc.strerror}") from None
        print(f"Untrusted {path.resolve()}." if forgot else f"{path} was not trusted with "
              "%llm trust (see %llm trust --list).")
        if forgot and self._in_use(path):
            self._reload_file(path, named=False)

    def _in_use(self, path: Path) -> bool:
        return path.resolve() == Path(self.ext.router.config.source).expanduser().resolve()

    def _config_path(self, given: str | None, command: str) -> Path:
        """PATH, else the file the current config came from."""
        path = Path(given or self.ext.router.config.source).expanduser()
        if not path.is_file():
            raise UsageError(f"%llm {command}: {path} is not a file (the config in use comes "
                             f"from {self.ext.router.config.source})")
        return path

    def _cache(self, args: argparse.Namespace) -> None:
        answers = self.ext.answers
        if args.action in ("on", "off", "replay"):
            answers.session_mode = args.action
            print(f"Answer cache: {args.action} for this session "
                  f"({answers.cache().path if args.action != 'off' else 'nothing read or stored'})"
                  + (": cells are answered only from recorded answers, never live"
                     if args.action == "replay" else "") + ".")
            return
        cache = answers.cache()
        if args.action == "clear":
            print(f"Answer cache cleared: {cache.clear()} answers removed ({cache.path}).")
            return
        print(f"Answer cache mode: {answers.mode()}")
        print("\n".join(cache.stats().lines()))

    def _fix(self, args: argparse.Namespace) -> None:
        from timmy_magic.notebook.magics.fix import fix

        fix(self.ext, args.options)

    def _explain(self, args: argparse.Namespace) -> None:
        from timmy_magic.notebook.magics.fix import explain

        explain(self.ext, args.options)

    def _history(self, args: argparse.Namespace) -> None:
        display(self.ext.conversation)

    def _reset(self, args: argparse.Namespace) -> None:
        n = self.ext.conversation.reset()
        print(f"Conversation cleared ({count(n, 'turn')}).")

    def _jobs(self, args: argparse.Namespace) -> None:
        display(jobs_bundle(self.ext.session.jobs.rows()), raw=True)

    def _cancel(self, args: argparse.Namespace) -> None:
        board = self.ext.session.jobs
        try:
            jobs = board.find(args.which)
        except UnknownJob as exc:
            raise UsageError(f"%llm cancel: {exc}") from None
        asked = [j for j in jobs if j.cancel()]
        for job in asked:
            job.wait(2.0)
        if not asked:
            print("Nothing to cancel: " + ("no job is running." if args.which == "all" else
                                          f"job {jobs[0].id} is {jobs[0].status} already."))
            return
        print(f"Cancelled {count(len(asked), 'job')} ({', '.join(str(j.id) for j in asked)}); "
              "partial answers are kept (VAR.result(), %llm jobs).")

    def _panel(self, args: argparse.Namespace) -> None:
        display(self.ext.panel())

    def _own_line(self, name: str, rest: str) -> Any:
        try:  # its own module's NAME_line (bench's may miss its extra)
            module = importlib.import_module(f"timmy_magic.notebook.magics.{OWN_MODULES[name]}")
        except ImportError as exc:
            print(f"{name} not available ({exc})")
            return None
        out = getattr(module, f"{name}_line")(self.ext.session, rest)
        if out is not None:
            display(out)
        return None

    def _known(self, name: str) -> str:
        try:
            self.ext.router.provider(name)
        except UnknownProvider as exc:
            raise UsageError(str(exc)) from None
        return name

    def _start(self, args: argparse.Namespace) -> None:
        name = self._known(args.name)
        try:
            notes = self.ext.router.start_server(name)
        except UnknownProvider as exc:  # no launch: section
            raise UsageError(str(exc)) from None
        except (LaunchError, TimeoutError) as exc:
            display(ErrorBlock(f"could not start {name}", str(exc) or type(exc).__name__, (),
                               (START_HINT,)).bundle(), raw=True)
            return
        print(f"{name}: {notes[-1] if notes else 'running'}")

    def _stop(self, args: argparse.Namespace) -> None:
        name = self._known(args.name)
        if self.ext.router.stop_server(name):
            print(f"Stopped {name}.")
        else:
            print(f"{name}: nothing to stop (no server started from here).")

    def _local_only(self, args: argparse.Namespace) -> None:
        if args.mode:
            self.ext.router.set_local_only(args.mode == "on")
        gate = self.ext.router.gate()
        print(f"local-only: {'on' if self.ext.router.local_only else 'off'}; cloud gate "
              f"{'open' if gate.open else 'closed (' + gate.reason + ')'}.")

    def _help(self, args: argparse.Namespace) -> None:
        print(self.help_text())

    def help_text(self) -> str:
        """Every command with its usage, aligned, then the options of %%llm."""
        action = self._subparsers()
        helps = {c.dest: c.help or "" for c in action._choices_actions}
        rows = [("%%llm [options]", "ask; the prompt is the rest of the cell")]
        for name, sub in action.choices.items():
            rows.append((sub.one_line_usage(), helps[name]))
        width = max(len(u) for u, _ in rows)
        lines = [f"  {u.ljust(width)}  {h}" for u, h in rows]
        options = self.ext.parser.format_help().partition("options:\n")[2]
        return (f"{HELP_HEAD}\n" + "\n".join(lines) + f"\n{HELP_TAIL}\nOptions of %%llm:\n{options}")


HELP_HEAD = "timmy-magic: a cascade of local and cloud LLMs. %llm COMMAND --help for one."
HELP_TAIL = """Settings: %config TimmyMagics (default_provider, default_model, default_format,
updates_per_second, max_tokens, temperature, show_trace, display_mode).
The last result: timmy_magic.last(); the router: timmy_magic.get_router()."""
