"""A kernel function as a tool: its JSON schema made from its signature by pydantic, the
model's arguments validated against it before anything runs, and its return value made
into the text the model gets back (JSON where pydantic can serialise it, else ``str()``),
masked (``privacy.masking``) and shortened.

A parameter without a type hint is a string; ``*args`` and ``**kwargs`` are not offered.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timmy_magic.model.errors import InvalidRequest, TimmyError
from timmy_magic.model.tools import ToolSpec
from timmy_magic.privacy.masking import Masker
from timmy_magic.text.markup import shorten

RESULT_CHARS = 8_000
"""Longest tool result sent back to the model (about 2,000 tokens): the rest is cut."""
DESCRIPTION_CHARS = 1_000
ERROR_CHARS = 300
MAX_ERRORS_SHOWN = 3
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


class ToolArgumentsError(TimmyError, ValueError):
    """The model's arguments are not JSON, or not what the signature takes (one line)."""


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable offered to a model: ``spec`` is what the model sees."""

    func: Callable[..., Any] = field(repr=False)
    spec: ToolSpec
    _arguments: Any = field(repr=False)
    """The pydantic model of its parameters (validates what the model sends)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def of(cls, func: Any) -> Tool:
        """A Tool from a function or bound method; InvalidRequest, one line, for anything
        else or a signature pydantic cannot make a schema of."""
        if isinstance(func, Tool):
            return func
        name = getattr(func, "__name__", None)
        if not callable(func) or not isinstance(name, str) or isinstance(func, type):
            raise InvalidRequest(f"a tool is a function or a method, not "
                                 f"{type(func).__name__}")
        if inspect.iscoroutinefunction(func):
            raise InvalidRequest(f"tool {name} is an async function: offer a plain one "
                                 "(it runs in the kernel's thread, between two turns)")
        if not _NAME.fullmatch(name):
            raise InvalidRequest(f"tool name {shorten(repr(name), 40)} is not a valid "
                                 "function name (letters, digits, _)")
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"tool {name}: no signature to read ({exc})") from None
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # an unresolvable forward reference: fall back to strings  # noqa: BLE001
            hints = {}
        fields: dict[str, Any] = {}
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            hint = hints.get(p.name, str) if p.annotation is not p.empty else str
            fields[p.name] = (hint, ... if p.default is p.empty else p.default)
        try:
            from pydantic import ConfigDict, create_model

            model: Any = create_model(f"{name}_arguments",
                                      __config__=ConfigDict(extra="forbid"), **fields)
            schema = model.model_json_schema()
        except Exception as exc:  # pydantic's errors for unschemable types vary  # noqa: BLE001
            raise InvalidRequest(f"tool {name}: cannot make a JSON schema of its parameters: "
                                 f"{_line(exc)}") from None
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        doc = inspect.getdoc(func) or ""
        doc = doc if len(doc) <= DESCRIPTION_CHARS else doc[:DESCRIPTION_CHARS - 1] + "…"
        return cls(func, ToolSpec(name, doc, schema), model)

    def validate(self, arguments: str) -> dict[str, Any]:
        """The arguments as the function takes them, or ToolArgumentsError saying in one
        line what is wrong (the model gets it back)."""
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError) as exc:
            raise ToolArgumentsError(f"the arguments are not valid JSON "
                                     f"({_line(exc)})") from None
        if not isinstance(raw, dict):
            raise ToolArgumentsError(f"the arguments must be a JSON object, not "
                                     f"{type(raw).__name__}")
        from pydantic import ValidationError

        try:
            checked = self._arguments.model_validate(raw)
        except ValidationError as exc:
            found = [(".".join(str(p) for p in e.get("loc", ())), str(e.get("msg", "")))
                     for e in exc.errors()]
            shown = "; ".join(f"{w}: {shorten(m, 120)}" if w else shorten(m, 120)
                              for w, m in found[:MAX_ERRORS_SHOWN])
            more = len(found) - MAX_ERRORS_SHOWN
            raise ToolArgumentsError(f"invalid arguments: {shown}"
                                     + (f" (and {more} more)" if more > 0 else "")) from None
        return {k: getattr(checked, k) for k in type(checked).model_fields}

    def __call__(self, arguments: dict[str, Any]) -> Any:
        return self.func(**arguments)


def result_text(value: Any, limit: int = RESULT_CHARS) -> str:
    """A tool's return value as the model gets it: JSON where pydantic can serialise it
    (models, dataclasses, dates, containers of them), else ``str()``; masked on the
    whole text before it is cut to ``limit`` characters."""
    if isinstance(value, str):
        text = value
    else:
        try:
            from pydantic_core import to_json

            text = to_json(value).decode("utf-8")
        except Exception:  # not serialisable: its str  # noqa: BLE001
            try:
                text = str(value)
            except Exception as exc:  # noqa: BLE001
                text = f"(its str() raised {type(exc).__name__})"
    text = Masker().text(text)
    return text if len(text) <= limit else text[:limit] + f"… (cut: {len(text):,} characters)"


def error_text(exc: BaseException) -> str:
    """An exception in a tool, as the model gets it: its type and first line, masked."""
    return Masker().text(f"{type(exc).__name__}: {_line(exc)}")


def _line(exc: BaseException) -> str:
    text = str(exc)
    return shorten(text.splitlines()[0] if text.strip() else type(exc).__name__, ERROR_CHARS)
