"""How a run's progress is shown (``timmy_magic.model.progress.Progress``): an ipywidgets
bar with its line in a notebook, a display line updated in place where widgets are
missing, one rewritten line on stderr in a terminal. The run says how far it is and when
to redraw; these only show it."""

from __future__ import annotations

import sys
from typing import IO, Any

from timmy_magic.model.progress import Progress
from timmy_magic.notebook.render import display, rich_frontend
from timmy_magic.text.markup import md


class WidgetBar:
    """An ``IntProgress`` named ``name`` and an HTML label holding the line; green at the
    end."""

    def __init__(self, name: str) -> None:
        import ipywidgets as w  # ImportError when missing: the caller falls back

        self._w, self.name = w, name
        self.bar: Any = None
        self.label: Any = None

    def start(self, total: int) -> None:
        self.bar = self._w.IntProgress(value=0, min=0, max=max(total, 1),
                                       description=self.name)
        self.label = self._w.HTML()
        display(self._w.HBox([self.bar, self.label]))

    def advance(self, done: int, line: str) -> None:
        self.bar.value = min(done, self.bar.max)
        self.label.value = f"<span>{md(line)}</span>"

    def finish(self, done: int, line: str) -> None:
        self.advance(done, line)
        self.bar.bar_style = "success"


class DisplayLine:
    """``name: line`` as one text output, updated in place (no widgets needed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: Any = None

    def start(self, total: int) -> None:
        self._handle = display({"text/plain": ""}, raw=True, display_id=True)

    def advance(self, done: int, line: str) -> None:
        self._handle.update({"text/plain": f"{self.name}: {line}"}, raw=True)

    def finish(self, done: int, line: str) -> None:
        self.advance(done, line)


class TerminalLine:
    """``name: line`` rewritten in place on one line of ``stream`` (default: stderr as it
    is when written to), ended by a newline at the finish."""

    def __init__(self, name: str, stream: IO[str] | None = None) -> None:
        self.name, self.stream = name, stream

    def start(self, total: int) -> None:
        pass

    def advance(self, done: int, line: str) -> None:
        self._write(f"\r{self.name}: {line}\033[K")

    def finish(self, done: int, line: str) -> None:
        self._write(f"\r{self.name}: {line}\033[K\n")

    def _write(self, text: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        out.write(text)
        out.flush()


def make_progress(name: str, shell: Any = None) -> Progress:
    """The display that fits where the code runs: a widget bar where a front end shows
    displays (``shell``: default, the running one), a display line if ipywidgets is
    missing there, a terminal line otherwise (plain Python, a terminal IPython)."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is not None and rich_frontend(shell):
        try:
            return WidgetBar(name)
        except ImportError:
            return DisplayLine(name)
    return TerminalLine(name)
