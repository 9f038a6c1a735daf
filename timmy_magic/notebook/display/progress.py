"""How a run's progress is shown (``timmy_magic.model.progress.Progress``): an ipywidgets
bar with its line in a notebook, a display line updated in place where widgets are
missing, one rewritten line on stderr in a terminal (``model.progress.TerminalLine``, the
one display below this layer). The run says how far it is and when to redraw; these only
show it. A run that finishes short of its total (interrupted) is shown as such: an amber
bar, where a whole run's turns green."""

from __future__ import annotations

from typing import Any

from timmy_magic.model.progress import Progress, TerminalLine
from timmy_magic.notebook.display.render import display, rich_frontend
from timmy_magic.text.markup import md, plain

__all__ = ["DisplayLine", "TerminalLine", "WidgetBar", "make_progress"]


class WidgetBar:
    """An ``IntProgress`` named ``name`` and an HTML label holding the line; at the finish
    green, or amber when the run stopped short. ``leave_line``: at the finish the widget is
    closed and its output replaced by ``name: line`` as text, so a saved notebook keeps
    that line rather than a widget it can no longer show."""

    def __init__(self, name: str, leave_line: bool = False) -> None:
        import ipywidgets as w  # ImportError when missing: the caller falls back

        self._w, self.name, self.leave_line = w, name, leave_line
        self.total = 0
        self.bar: Any = None
        self.label: Any = None
        self.box: Any = None
        self._handle: Any = None

    def start(self, total: int) -> None:
        self.total = total
        self.bar = self._w.IntProgress(value=0, min=0, max=max(total, 1),
                                       description=self.name)
        self.label = self._w.HTML()
        self.box = self._w.HBox([self.bar, self.label])
        self._handle = display(self.box, display_id=True)

    def advance(self, done: int, line: str) -> None:
        self.bar.value = min(done, self.bar.max)
        self.label.value = f"<span>{md(line)}</span>"

    def finish(self, done: int, line: str) -> None:
        self.advance(done, line)
        self.bar.bar_style = "success" if done >= self.total else "warning"
        if self.leave_line:
            self._handle.update({"text/plain": plain(f"{self.name}: {line}")}, raw=True)
            self.box.close()


class DisplayLine:
    """``name: line`` as one text output, updated in place (no widgets needed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: Any = None

    def start(self, total: int) -> None:
        self._handle = display({"text/plain": ""}, raw=True, display_id=True)

    def advance(self, done: int, line: str) -> None:
        self._handle.update({"text/plain": plain(f"{self.name}: {line}")}, raw=True)

    def finish(self, done: int, line: str) -> None:
        self.advance(done, line)


def make_progress(name: str, shell: Any = None, *, leave_line: bool = False) -> Progress:
    """The display that fits where the code runs: a widget bar where a front end shows
    displays (``shell``: default, the running one), a display line if ipywidgets is
    missing there, a terminal line otherwise (plain Python, a terminal IPython).
    ``leave_line``: the widget bar leaves its last line as text (``WidgetBar``)."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if rich_frontend(shell):
        try:
            return WidgetBar(name, leave_line)
        except ImportError:
            return DisplayLine(name)
    return TerminalLine(name)
