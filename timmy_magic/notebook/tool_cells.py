"""``%%llm --tools f,g``: the kernel functions a cell offers, the approval asked through
the kernel's stdin, and the tool loop's events for the cell's view.

Approval reads ``input()``: while a cell runs it works in JupyterLab, classic Notebook,
VS Code and a terminal. Answers: ``y``/``yes`` run this call, ``n``/``no`` (or nothing)
deny it, ``a``/``always`` run it and every later call of that function in this session.
Where there is no stdin to ask on (a notebook run headless), a call is denied and the
cell says how to approve (``--yes``). ``--yes`` approves every call of one cell;
``%config TimmyMagics.approve_tools = 'always'`` every call of the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from IPython.core.error import StdinNotImplementedError, UsageError

from timmy_magic.model.chat import ChatRequest, Delta, Done, Event, Result
from timmy_magic.model.errors import InvalidRequest
from timmy_magic.notebook.display.render import NotebookView, View
from timmy_magic.routing.runner import Tick
from timmy_magic.tools import PendingCall, Tool, ToolLoop

if TYPE_CHECKING:
    from timmy_magic.notebook.session import CellOptions, Session

ASKS = 3
"""Answers read before a call counts as denied (an answer that is none of the above)."""
NO_STDIN = ("no stdin to ask on: {line} denied (approve with --yes, or "
            "%config TimmyMagics.approve_tools = 'always')")


def cell_tools(names: tuple[str, ...], namespace: dict[str, Any]) -> tuple[Tool, ...]:
    """The tools ``--tools a,b`` names, or a one-line UsageError naming the first that is
    not a function in the kernel or whose signature has no schema."""
    out = []
    for name in names:
        if name not in namespace:
            raise UsageError(f"--tools {name}: no function {name!r} in the kernel")
        try:
            out.append(Tool.of(namespace[name]))
        except InvalidRequest as exc:
            raise UsageError(f"--tools {name}: {exc}") from None
    if len({t.name for t in out}) < len(out):
        raise UsageError(f"--tools {','.join(names)}: two functions have the same name")
    return tuple(out)


class Approver:
    """Asks the user about each call through stdin (``input``)."""

    def __init__(self, yes: bool, setting: Callable[[], str], always: set[str],
                 ask: Callable[[str], str] | None = None) -> None:
        self.yes = yes
        self.setting = setting
        self.always = always
        """Functions the user answered ``always`` for (kept by the Session)."""
        self._ask = ask or _input

    def __call__(self, call: PendingCall) -> bool:
        if self.yes or self.setting() == "always" or call.name in self.always:
            return True
        for _ in range(ASKS):
            try:
                answer = self._ask(f"run {call.line}? [y]es / [n]o / [a]lways {call.name}: ")
            except (EOFError, StdinNotImplementedError):
                print(NO_STDIN.format(line=call.line))
                return False
            said = answer.strip().lower()
            if said in ("y", "yes"):
                return True
            if said in ("", "n", "no"):
                return False
            if said in ("a", "always"):
                self.always.add(call.name)
                return True
        return False


def _input(prompt: str) -> str:
    return input(prompt)  # looked up when asked: ipykernel replaces it while a cell runs


def events(session: Session, req: ChatRequest, opts: CellOptions,
           live: bool) -> Iterator[Event | Tick]:
    """A tool cell's events: each turn's (looked up in the cell's cache, else streamed and
    recorded), a ``ToolRan`` after each call, the final ``Done``."""
    cache = session.answers

    def turn(r: ChatRequest) -> Iterator[Event | Tick]:
        fields, mode = cache.fields(r, opts.fmt, opts.cache)
        hit = cache.lookup(fields, mode, r.schema)
        if hit is not None:
            return cached_turn(hit)
        return recorded(session.events(r, live), lambda res: cache.record(fields, res, mode))

    approve = Approver(opts.approve_all,
                       lambda: str(getattr(session.settings, "approve_tools", "ask")),
                       session.always_approved)
    return ToolLoop(req, opts.tools, approve, opts.max_tool_rounds).events(turn)


def view(shown: View, opts: CellOptions, mode: str) -> View:
    """The view of a tool cell: in replay, one display (the final render), as a cached
    answer has, instead of a placeholder updated call by call."""
    if mode == "replay" and isinstance(shown, NotebookView):
        return NotebookView(opts.fmt, live=False, placeholder=False)
    return shown


def cached_turn(hit: Result) -> Iterator[Event | Tick]:
    """A recorded turn as its events."""
    return iter((Delta(hit.text), Done(hit)) if hit.text else (Done(hit),))


def recorded(events: Iterator[Event | Tick], keep: Callable[[Result], object]
             ) -> Iterator[Event | Tick]:
    """``events``, with the turn's Result kept (recorded) when its Done passes."""
    try:
        for ev in events:
            if isinstance(ev, Done):
                keep(ev.result)
            yield ev
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
