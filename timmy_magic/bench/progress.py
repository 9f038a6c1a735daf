"""How a benchmark says how far it is, and the display ``bench.run`` picks by itself.

The run reports through ``timmy_magic.model.progress.Progress`` in the words below; the
display is passed in (``%llm bench`` passes the notebook's, ``timmy_magic.notebook.
progress.make_progress``). Without one, ``bench.run`` can only pick what needs no front
end, since this package knows no notebook: a terminal line when stderr is a terminal.
"""

from __future__ import annotations

import sys
from typing import IO, Literal

from timmy_magic.model.progress import Progress, TerminalLine

ProgressMode = Literal["auto", "text", "none"]
"""``"auto"``: a terminal line when stderr is a terminal, else nothing (a kernel's stderr
is not one: a notebook passes its own display); ``"text"``: a terminal line on stderr
wherever it goes; ``"none"``: nothing. ``True`` and ``False`` mean "text" and "none"."""


def pick_progress(mode: ProgressMode | bool | Progress | None,
                  stream: IO[str] | None = None) -> Progress | None:
    """The display for ``mode`` (a ``Progress`` is used as it is; None: nothing)."""
    if mode is None or mode is False or mode == "none":
        return None
    if mode is True or mode == "text":
        return TerminalLine("bench", stream)
    if mode == "auto":
        out = stream if stream is not None else sys.stderr
        return TerminalLine("bench", stream) if out.isatty() else None
    if isinstance(mode, str):
        raise ValueError(f"progress={mode!r}: expected 'auto', 'text', 'none' or a display "
                         "such as timmy_magic.notebook.display.progress.make_progress('bench')")
    return mode


def progress_line(done: int, total: int, label: str) -> str:
    """``12/40 requests · fast · c=4 · 3/8``: how far the run is, and where."""
    return f"{done}/{total} requests · {label}"


def summary_line(done: int, total: int, elapsed: float, interrupted: bool) -> str:
    """The line left after the run: ``ran 27/27 requests in 5.7 s``."""
    verb = "interrupted after" if interrupted else "ran"
    return f"{verb} {done}/{total} requests in {elapsed:.1f} s"
