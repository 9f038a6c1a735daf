"""The ``%llm`` line commands: status, providers, pin/unpin, local-only, reload, history,
reset, start/stop, panel, bench, help. Each takes the rest of the line; user mistakes are
``UsageError`` one-liners, expected failures one readable block."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from . import trust
from .config import find_config, found_by_search, load_config, trust_reason
from .errors import ConfigError, UnknownProvider
from .failures import ErrorBlock
from .launch import LaunchError
from .render import display
from .tables import providers_bundle, status_bundle

if TYPE_CHECKING:
    from .magics import TimmyMagics

COMMANDS = ("status", "providers", "pin", "unpin", "local-only", "reload", "trust", "untrust",
            "history", "reset", "start", "stop", "panel", "bench", "help")
START_HINT = "`%llm status` shows its state; check its `launch:` section in providers.yaml."


class LineCommands:
    def __init__(self, ext: TimmyMagics) -> None:
        self.ext = ext

    def run(self, line: str) -> Any:
        name, _, rest = line.strip().partition(" ")
        handlers: dict[str, Callable[[str], Any]] = {
            "status": self._status, "providers": self._providers, "pin": self._pin,
            "unpin": self._unpin, "reload": self._reload, "history": self._history,
            "reset": self._reset, "panel": self._panel, "bench": self._bench,
            "help": self._help, "": self._help, "start": self._start, "stop": self._stop,
            "local-only": self._local_only, "trust": self._trust, "untrust": self._untrust,
        }
        handler = handlers.get(name)
        if handler is None:
            raise UsageError(f"unknown command '{name}'; commands: {', '.join(COMMANDS)}. "
                             "To ask a model, start a cell with %%llm.")
        return handler(rest.strip())

    def _status(self, rest: str) -> None:
        if rest not in ("", "--cached"):
            raise UsageError("usage: %llm status [--cached]")
        r = self.ext.router
        reports = r.health() if rest == "--cached" else {**r.health(), **r.check_health()}
        gate = r.gate()
        display(status_bundle(reports, r.metrics(), pinned=r.pinned, gate_open=gate.open,
                              gate_reason=gate.reason, spent_usd=r.ledger.spent_today,
                              budget_usd=r.config.cloud_gate.daily_budget_usd), raw=True)

    def _providers(self, rest: str) -> None:
        display(providers_bundle(self.ext.router.config, self.ext.router.pinned), raw=True)

    def _pin(self, rest: str) -> None:
        self.ext.router.pin(self._one_name(rest, "pin"))
        print(f"Pinned to {rest}: every %%llm cell goes there, with no fallback, "
              "until %llm unpin.")

    def _unpin(self, rest: str) -> None:
        was = self.ext.router.pinned
        self.ext.router.pin(None)
        print(f"Unpinned {was}: the cascade chooses again." if was else
              "Nothing was pinned: the cascade chooses.")

    def _reload(self, rest: str) -> None:
        # a path the user names is trusted (as an explicit load_config path); the file the
        # search finds is not, unless trusted otherwise
        self._reload_file(find_config(rest or None), named=bool(rest))

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
                f"Still using {len(old.providers)} providers from {old.source}.",
                "Fix the file, then run `%llm reload` again.")).bundle(), raw=True)
            return
        self.ext.router.check_health_soon()
        warn = f"; {len(cfg.warnings)} warnings (%llm providers)" if cfg.warnings else ""
        print(f"Reloaded {len(cfg.providers)} providers from {cfg.source}{warn}.")
        if cfg.held_back_line:
            print(cfg.held_back_line)

    def _trust(self, rest: str) -> None:
        """``%llm trust [PATH]``: record the file's hash, then load it with everything it
        asks for; ``%llm trust --list``: the trusted files and whether they still match."""
        if rest == "--list":
            rows = trust.entries()
            if not rows:
                print(f"No file is trusted with %llm trust (store: {trust.store_path()}).")
            for e in rows:
                print(f"{e.status():8} {e.path}  (sha256 {e.sha256[:12]}…, {e.trusted_at})")
            return
        path = self._config_path(rest, "trust")
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

    def _untrust(self, rest: str) -> None:
        path = self._config_path(rest, "untrust")
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

    def _config_path(self, rest: str, command: str) -> Path:
        """PATH, else the file the current config came from."""
        if rest.startswith("-") or " " in rest.strip():
            raise UsageError(f"usage: %llm {command} [PATH]" +
                             (" | --list" if command == "trust" else ""))
        path = Path(rest or self.ext.router.config.source).expanduser()
        if not path.is_file():
            raise UsageError(f"%llm {command}: {path} is not a file (the config in use comes "
                             f"from {self.ext.router.config.source})")
        return path

    def _history(self, rest: str) -> None:
        display(self.ext.conversation)

    def _reset(self, rest: str) -> None:
        n = self.ext.conversation.reset()
        print(f"Conversation cleared ({n} turns).")

    def _panel(self, rest: str) -> None:
        display(self.ext.panel())

    def _bench(self, rest: str) -> Any:
        try:
            from .bench.magic import bench_line
        except ImportError as exc:
            print(f"bench not available ({exc})")
            return None
        out = bench_line(self.ext, rest)
        if out is not None:
            display(out)
        return None

    def _one_name(self, rest: str, command: str) -> str:
        if not rest or " " in rest:
            raise UsageError(f"usage: %llm {command} NAME (see %llm providers)")
        try:
            self.ext.router.provider(rest)
        except UnknownProvider as exc:
            raise UsageError(str(exc)) from None
        return rest

    def _start(self, rest: str) -> None:
        name = self._one_name(rest, "start")
        try:
            notes = self.ext.router.start_server(name)
        except UnknownProvider as exc:  # no launch: section
            raise UsageError(str(exc)) from None
        except (LaunchError, TimeoutError) as exc:
            display(ErrorBlock(f"could not start {name}", str(exc) or type(exc).__name__, (),
                               (START_HINT,)).bundle(), raw=True)
            return
        print(f"{name}: {notes[-1] if notes else 'running'}")

    def _stop(self, rest: str) -> None:
        name = self._one_name(rest, "stop")
        if self.ext.router.stop_server(name):
            print(f"Stopped {name}.")
        else:
            print(f"{name}: nothing to stop (no server started from here).")

    def _local_only(self, rest: str) -> None:
        if rest not in ("", "on", "off"):
            raise UsageError("usage: %llm local-only [on|off]")
        if rest:
            self.ext.router.set_local_only(rest == "on")
        gate = self.ext.router.gate()
        print(f"local-only: {'on' if self.ext.router.local_only else 'off'}; cloud gate "
              f"{'open' if gate.open else 'closed (' + gate.reason + ')'}.")

    def _help(self, rest: str) -> None:
        options = self.ext.parser.format_help().partition("options:\n")[2]
        print(f"{HELP}\nOptions of %%llm:\n{options}")


HELP = """timmy-magic: a cascade of local and cloud LLMs.

  %%llm [options]      ask; the prompt is the rest of the cell
  %llm status [--cached]  health of every provider (probes now unless --cached)
  %llm providers       what providers.yaml configures
  %llm pin NAME        send every cell to NAME (no fallback); %llm unpin to undo
  %llm local-only [on|off]  keep cloud providers out (the cloud gate)
  %llm start NAME      start a managed local server (launch: in providers.yaml);
  %llm stop NAME       stop one started from here
  %llm reload [PATH]   re-read providers.yaml (a bad file keeps the current config)
  %llm trust [PATH]    let a providers.yaml from the working dir run its launch/quota
                       commands and read ${VARS}; --list shows trusted files; %llm untrust
  %llm history         the --chat conversation; %llm reset clears it
  %llm panel           the provider panel (widgets)
  %llm bench ...       benchmarks
Settings: %config TimmyMagics (default_provider, default_model, default_format,
updates_per_second, max_tokens, temperature, show_trace, display_mode).
The last result: timmy_magic.last(); the router: timmy_magic.get_router().
"""
