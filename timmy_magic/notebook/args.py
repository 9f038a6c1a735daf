"""The argument parser of every ``%llm`` line command: argparse that raises IPython's
``UsageError`` (one line, no traceback) instead of exiting the kernel."""

from __future__ import annotations

import argparse
import shlex
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


def own_line_args(command: str, line: str, parser: argparse.ArgumentParser
                  ) -> argparse.Namespace | None:
    """The arguments of a ``%llm COMMAND`` line that has its own parser (``COMMAND``
    itself may lead the line); None when ``--help`` was shown. A quoting mistake and an
    ``-o`` that is no variable name are one-line UsageErrors naming the command."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%llm {command}: {exc}") from None
    if argv[:1] == [command]:
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except HelpShown:
        return None
    output = getattr(args, "output", None)
    if output and not output.isidentifier():
        raise UsageError(f"%llm {command}: -o needs a variable name, got {output!r}")
    return args
