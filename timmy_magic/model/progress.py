"""The progress of a long run, as the code that runs it reports it.

A feature (``batch``, ``bench``) knows how far it is and says it in words; how that is
shown is the notebook layer's (``timmy_magic.notebook.display.progress``: an ipywidgets bar, a
display line). The one display that needs no front end, ``TerminalLine``, lives here so
that a feature run from plain Python in a terminal can show it without the notebook
layer; it writes only to the stream it is given. Tests pass their own.
"""

from __future__ import annotations

import sys
from typing import IO, Protocol

from timmy_magic.text.markup import plain


class Progress(Protocol):
    """One run of ``total`` steps: shown by ``start``, redrawn by ``advance`` as steps
    finish (``line``: how far, in words), closed by ``finish`` with the last line; a run
    that stopped short (interrupted) finishes with ``done`` below ``total``. The caller
    decides how often to redraw; a display only shows what it is given."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int, line: str) -> None: ...

    def finish(self, done: int, line: str) -> None: ...


class TerminalLine:
    """``name: line`` rewritten in place on one line of ``stream`` (default: stderr as it
    is when written to), ended by a newline at the finish. The line is shown as text
    (``markup.plain``, on one line): a name from a config cannot move the cursor."""

    def __init__(self, name: str, stream: IO[str] | None = None) -> None:
        self.name, self.stream = name, stream

    def start(self, total: int) -> None:
        pass

    def advance(self, done: int, line: str) -> None:
        self._write(line, "")

    def finish(self, done: int, line: str) -> None:
        self._write(line, "\n")

    def _write(self, line: str, end: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        shown = plain(f"{self.name}: {line}").replace("\n", " ")
        out.write(f"\r{shown}\033[K{end}")
        out.flush()
