"""Escape-safe ``{name}`` interpolation of kernel variables into a prompt.

jupyter-ai formats prompts with ``str.format_map``, so any ``{`` in pasted code or JSON
crashes the cell (its issues #27, #967). Here a brace is only special when it is part of a
*reference*; everything else is left exactly as written:

- ``{{`` and ``}}`` escape: ``{{name}}`` sends ``{name}``. A ``}}`` that closes no ``{{``
  is left as written, so nested JSON (``{"a": {"b": 1}}``) is never altered;
- ``{ref}`` is replaced by ``str(value)`` when ``ref`` is a name followed by any number of
  ``.attribute`` and ``[index]`` parts, an index being an integer or a quoted string:
  ``{topic}``, ``{df.shape[0]}``, ``{cfg["model"]}``, ``{rows[-1].name}``;
- any other brace (``{"a": 1}``, ``{ x }``, ``{x:.2f}``, ``{}``, a lone ``}``) stays as is;
- braces that continue LaTeX or shell syntax are text, not references: after ``$``
  (``${HOME}``), after a backslash command (``\\frac{a}{b}``, ``\\mathbf{x}``), after ``^``
  or ``_`` (``x^{n}``, ``a_{ij}``) and right after a closing brace (the ``{b}`` of ``}{b}``);
- a reference whose name is undefined, or whose lookup or ``str()`` fails, raises
  ``InterpolationError`` naming it.

What runs: nothing is parsed as Python or evaluated, but an attribute lookup is Python's
``getattr`` (a property or ``__getattr__`` runs), an index calls ``__getitem__``, and the
value is turned into text with ``str()`` (its ``__str__`` runs), exactly as an f-string
would. A reference is looked up only when the cell runs, never while it is typed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from timmy_magic.model.errors import TimmyError

_NAME = r"[^\W\d]\w*"
_INDEX = r"\[(?:-?\d+|'[^'\\\]]*'|\"[^\"\\\]]*\")\]"
_REF = re.compile(rf"\{{({_NAME}(?:\.{_NAME}|{_INDEX})*)\}}")
_PART = re.compile(rf"\.({_NAME})|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_BRACE = re.compile(r"[{}]")
_LITERAL_BEFORE = re.compile(r"(?:[$^_}]|\\[A-Za-z]+\*?)\Z")
"""What, just before a ``{``, makes it LaTeX or shell syntax rather than a reference."""
_HINT = "write {{ and }} for literal braces, or use %%llm --no-interpolate"


class InterpolationError(TimmyError):
    """A ``{reference}`` could not be resolved; the message names it."""


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """``template`` with every ``{reference}`` replaced and ``{{``/``}}`` unescaped."""
    out: list[str] = []
    for kind, text in _tokens(template):
        out.append(_text(resolve(text, namespace), text) if kind == "ref" else text)
    return "".join(out)


def _text(value: Any, ref: str) -> str:
    try:
        return str(value)
    except Exception as exc:  # a user __str__ may raise anything
        raise InterpolationError(f"{{{ref}}}: str() of the {type(value).__name__} failed "
                                 f"({type(exc).__name__}: {exc})") from exc


def _tokens(template: str) -> list[tuple[str, str]]:
    """("text", literal) and ("ref", reference) pieces, escapes already resolved. Text
    between braces is copied in slices, so a 5 MiB cell costs a few regex searches."""
    tokens: list[tuple[str, str]] = []
    open_escapes = 0
    i, n = 0, len(template)
    while i < n:
        brace = _BRACE.search(template, i)
        if brace is None:
            tokens.append(("text", template[i:]))
            break
        if brace.start() > i:
            tokens.append(("text", template[i:brace.start()]))
            i = brace.start()
        if template.startswith("{{", i):
            tokens.append(("text", "{"))
            open_escapes += 1
            i += 2
        elif template.startswith("}}", i) and open_escapes:
            tokens.append(("text", "}"))
            open_escapes -= 1
            i += 2
        elif (m := _REF.match(template, i)) is not None and not _literal(template, i, tokens):
            tokens.append(("ref", m.group(1)))
            i = m.end()
        else:
            tokens.append(("text", template[i]))
            i += 1
    return tokens


def _literal(template: str, i: int, tokens: list[tuple[str, str]]) -> bool:
    """Is the ``{`` at ``i`` LaTeX or shell syntax? (``}`` counts only after text: two
    references side by side, ``{a}{b}``, are both references.)"""
    if not _LITERAL_BEFORE.search(template, max(0, i - 32), i):
        return False
    return not (template[i - 1] == "}" and tokens and tokens[-1][0] == "ref")


def references(template: str) -> list[str]:
    """The references ``interpolate`` would look up, in order (escapes skipped)."""
    return [text for kind, text in _tokens(template) if kind == "ref"]


def resolve(ref: str, namespace: Mapping[str, Any]) -> Any:
    """Look up ``name.attr[0]['key']`` in ``namespace``; InterpolationError if it fails."""
    name = re.match(_NAME, ref)
    assert name is not None  # guaranteed by _REF
    if name.group() not in namespace:
        raise InterpolationError(f"{{{ref}}}: name '{name.group()}' is not defined "
                                 f"({_HINT})")
    value = namespace[name.group()]
    for part in _PART.finditer(ref, name.end()):
        value = _step(value, part, ref)
    return value


def _step(value: Any, part: re.Match[str], ref: str) -> Any:
    attr, number, single, double = part.groups()
    try:
        if attr is not None:
            return getattr(value, attr)
        return value[int(number) if number is not None else
                     (single if single is not None else double)]
    except Exception as exc:  # user objects may raise anything from a lookup
        what = f"no attribute '{attr}'" if isinstance(exc, AttributeError) and attr else \
            f"{type(exc).__name__}: {exc}"
        raise InterpolationError(f"{{{ref}}}: {type(value).__name__} lookup "
                                 f"'{part.group()}' failed ({what})") from exc
