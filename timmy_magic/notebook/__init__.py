"""The notebook surface: ``%%llm`` (``cell``), the ``%llm`` commands (``commands``) and
loading the extension (``extension``)."""

from __future__ import annotations

from timmy_magic.notebook.cell import INTERRUPTED, StreamInterrupted, TimmyMagics
from timmy_magic.notebook.extension import extension, get_router, last, load, panel, unload

__all__ = ["INTERRUPTED", "StreamInterrupted", "TimmyMagics", "extension", "get_router",
           "last", "load", "panel", "unload"]
