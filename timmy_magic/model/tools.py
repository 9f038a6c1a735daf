"""Tool calling values: what a model is offered (``ToolSpec``), what it asks for
(``ToolCall``), what became of each call (``ToolRecord``), and the event a tool loop
yields when a call has run (``ToolRan``).

Pure values, frozen: they cross from the router's loop thread to the kernel thread. The
functions themselves (their signatures, validation, running) belong to ``tools/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from timmy_magic.text.markup import shorten

CALL_SHOWN_CHARS = 120
"""Longest rendering of one argument value in a call line (``add(a=2, b=3)``)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function as a model is offered it: its name, description and the JSON Schema of
    its parameters (an object schema)."""

    name: str
    description: str
    parameters: dict[str, Any]

    def canonical(self) -> dict[str, Any]:
        """What decides an answer (the cache key)."""
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call a model asked for: the id its protocol gave it (made up when none), the
    name, and the arguments as the JSON text the model wrote (validated only when run)."""

    id: str
    name: str
    arguments: str = "{}"

    def canonical(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    def parsed(self) -> Any:
        """The arguments as JSON values (``{}`` for an empty text); ValueError if not JSON."""
        return json.loads(self.arguments) if self.arguments.strip() else {}


def call_line(name: str, arguments: Any) -> str:
    """``add(a=2, b=3)``: a call as the user reads it (each value's repr shortened)."""
    if isinstance(arguments, dict):
        inner = ", ".join(f"{k}={shorten(repr(v), CALL_SHOWN_CHARS)}"
                          for k, v in arguments.items())
    else:
        inner = shorten(str(arguments), CALL_SHOWN_CHARS)
    return f"{name}({inner})"


@dataclass(frozen=True, slots=True)
class ToolRecord:
    """What became of one call: its arguments (as validated, or as the model sent them),
    the result as sent back to the model, or the error; whether the user approved it and
    how long it ran."""

    name: str
    arguments: dict[str, Any]
    result: str | None = None
    error: str | None = None
    approved: bool = False
    duration_s: float = 0.0
    round: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """One line: the call, then its result or error, shortened."""
        what = f"→ {shorten(self.result or '', 160)}" if self.error is None \
            else f"✗ {shorten(self.error, 160)}"
        took = f" ({self.duration_s:.2f}s)" if self.approved else ""
        return " ".join(f"{call_line(self.name, self.arguments)} {what}{took}".split())


@dataclass(frozen=True, slots=True)
class ToolRan:
    """A tool loop's event: one call has been decided and, if approved, run."""

    record: ToolRecord
