"""What a failing cell referenced, for ``%llm fix`` and ``explain``: the kernel's values
the cell names (summarised and masked as ``--vars`` values are), and the names close to
the one the error says is missing (a typo of a variable, a column, a key or an attribute).

A small model cannot fix ``df["populaton_m"]`` without seeing that ``df`` has a column
``population_m``: these lines give it that, and nothing the cell did not name.
"""

from __future__ import annotations

import builtins
import difflib
import re
import types
from collections.abc import Iterable, Mapping
from typing import Any

MAX_REFERENCED = 6
"""Values of a failing cell sent with it, at most (its first names, in order)."""
MAX_CANDIDATES = 2000
"""Names compared with a missing one, at most (a DataFrame of 10^5 columns stays cheap)."""

MAX_NAME_CHARS = 200
"""A missing "name" longer than this is data, not a typo: no close names for it."""

_IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_SHELL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "display"})
_MISSING = (
    re.compile(r"name '([^']+)' is not defined"),
    re.compile(r"has no attribute '([^']+)'"),
    re.compile(r"^'([^']+)'$"),  # KeyError: 'populaton_m'
    re.compile(r"^\"([^\"]+)\"$"),
)


def referenced_names(source: str, namespace: Mapping[str, Any]) -> list[str]:
    """The kernel names ``source`` reads that are worth showing, in order of first use:
    values and the user's own functions and classes; not modules, not what a library
    defined, not builtins or the shell's own names."""
    seen: list[str] = []
    for name in _IDENT.findall(source):
        if name in seen or name.startswith("_") or name in _SHELL_NAMES:
            continue
        if name not in namespace or _is_library(namespace[name], name):
            continue
        seen.append(name)
        if len(seen) == MAX_REFERENCED:
            break
    return seen


def _is_library(value: object, name: str) -> bool:
    if isinstance(value, types.ModuleType):
        return True
    if getattr(builtins, name, None) is value:
        return True
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return getattr(value, "__module__", "__main__") != "__main__"
    return False


def missing_name(error_type: str, message: str) -> str | None:
    """The name a NameError, KeyError or AttributeError says is not there, else None."""
    if error_type.rsplit(".", 1)[-1] not in ("NameError", "KeyError", "AttributeError",
                                             "UnboundLocalError"):
        return None
    for pattern in _MISSING:
        if (m := pattern.search(message.strip())) and len(m.group(1)) <= MAX_NAME_CHARS:
            return m.group(1)
    return None


def close_names(missing: str, namespace: Mapping[str, Any],
                referenced: Iterable[str]) -> list[str]:
    """Names close to ``missing``: kernel names, and the columns, string keys and
    attributes of the referenced values, each said with where it is (``population_m (a
    column of df)``)."""
    where: dict[str, str] = {}
    for name in namespace:
        if not name.startswith("_") and name not in _SHELL_NAMES:
            where.setdefault(name, "a variable")
    for name in referenced:
        for key, what in _members(namespace.get(name)):
            where.setdefault(key, f"{what} of {name}")
        if len(where) > MAX_CANDIDATES:
            break
    candidates = [k for k in list(where)[:MAX_CANDIDATES] if k != missing]
    found = difflib.get_close_matches(missing, candidates, n=3, cutoff=0.7)
    return [f"{k} ({where[k]})" for k in found]


def _members(value: object) -> list[tuple[str, str]]:
    """(name, what it is) of the columns, string keys or public attributes of ``value``;
    nothing that would run user code beyond reading these (a failure gives nothing)."""
    try:
        columns = getattr(value, "columns", None)
        if columns is not None and type(value).__module__.startswith(("pandas", "polars")):
            return [(str(c), "a column") for c in list(columns)[:MAX_CANDIDATES]]
        if isinstance(value, dict):
            return [(k, "a key") for k in list(value)[:MAX_CANDIDATES] if isinstance(k, str)]
        if value is not None and not isinstance(value, (str, bytes, int, float)):
            return [(a, "an attribute") for a in dir(value)[:MAX_CANDIDATES]
                    if not a.startswith("_")]
    except Exception:  # noqa: BLE001 - a hostile __getattr__/__dir__: no suggestions
        return []
    return []
