"""The notebook surface: ``%%llm`` (``cell``), the ``%llm`` commands (``commands``) and
loading the extension (``extension``)."""

from __future__ import annotations

from .cell import INTERRUPTED, StreamInterrupted, TimmyMagics
from .extension import extension, get_router, last, load, panel, router, unload

__all__ = ["INTERRUPTED", "StreamInterrupted", "TimmyMagics", "extension", "get_router",
           "last", "load", "panel", "router", "unload"]
