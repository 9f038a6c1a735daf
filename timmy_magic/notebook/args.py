"""The argument parser of every ``%llm`` line command: argparse that raises IPython's
``UsageError`` (one line, no traceback) instead of exiting the kernel."""

from __future__ import annotations

import argparse
from typing import NoReturn

from IPython.core.error import UsageError

from timmy_magic.model.errors import TimmyError


class HelpShown(TimmyError):
    """``--help`` printed its text: nothing else to do (the command catches it)."""


class UsageParser(argparse.ArgumentParser):
    """An error is ``UsageError("PROG: message (usage: ...)")`` on one line; ``--help``
    prints and raises ``HelpShown``, which the command catches."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (usage: {self.one_line_usage()})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(f"{self.prog}: {message or 'invalid arguments'}".strip())
        raise HelpShown

    def one_line_usage(self) -> str:
        """The usage without ``usage: `` and ``[-h]``, on one line (for an error, a list)."""
        usage = " ".join(self.format_usage().removeprefix("usage: ").split())
        return usage.replace("[-h] ", "").replace(" [-h]", "")
