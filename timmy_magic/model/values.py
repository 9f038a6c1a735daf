"""Validated data as plain JSON values, for whatever shows or exports it."""

from __future__ import annotations

from typing import Any

from timmy_magic.model.errors import TimmyError


class NotShowable(TimmyError, ValueError):
    """Validated data that cannot be turned into JSON values (a user's serializer raised,
    nesting past the recursion limit): show the answer's text instead."""


def jsonable(data: Any) -> Any:
    """Validated data as JSON values, whatever type the schema made: pydantic models,
    dataclasses, TypedDicts, sets, dates, Decimals, bytes (pydantic's own serializer, with
    ``str`` for anything it does not know). NotShowable, never anything else, when that
    fails."""
    from pydantic_core import to_jsonable_python

    try:
        return to_jsonable_python(data, fallback=str)
    except RecursionError:
        raise NotShowable("nested too deeply to show") from None
    except Exception as exc:  # noqa: BLE001 - a user's field serializer may raise anything
        raise NotShowable(f"cannot be shown: {type(exc).__name__}") from None
