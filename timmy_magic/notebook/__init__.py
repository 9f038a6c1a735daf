"""The IPython layer: loading the extension (``extension``), the ``Session`` at the
centre (``session``), the magics that parse arguments and call it (``cell``,
``commands``, ``magics.bench``, with the one raising parser in ``args``),
``timmy_magic.map``'s notebook face (``api``), the
conversation memory (``history``), the cache as cells use it (``cached``), and what is
shown (``display/``: answers, side by side, progress, failures, tables, the panel).

The only package that imports IPython or ipywidgets."""

from __future__ import annotations

from timmy_magic.notebook.cell import TimmyMagics
from timmy_magic.notebook.extension import (
    extension,
    get_router,
    last,
    load,
    panel,
    session,
    unload,
)
from timmy_magic.notebook.session import INTERRUPTED, Session, StreamInterrupted

__all__ = ["INTERRUPTED", "Session", "StreamInterrupted", "TimmyMagics", "extension",
           "get_router", "last", "load", "panel", "session", "unload"]
