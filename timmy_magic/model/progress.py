"""The progress of a long run, as the code that runs it reports it.

A feature (``batch``, ``bench``) knows how far it is and says it in words; how that is
shown (an ipywidgets bar, a display line, one line of a terminal) is the notebook layer's
(``timmy_magic.notebook.progress``). Tests pass their own.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """One run of ``total`` steps: shown by ``start``, redrawn by ``advance`` as steps
    finish (``line``: how far, in words), closed by ``finish`` with the last line. The
    caller decides how often to redraw; a display only shows what it is given."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int, line: str) -> None: ...

    def finish(self, done: int, line: str) -> None: ...
