"""How a problem in providers.yaml is said: one line naming the file, the provider and the
field (``ConfigError``), echoing no secret.

A provider is named by its ``name:`` when that is a clean word, else by its place in the
list (``#2``). A pydantic ``ValidationError`` becomes the one line of its first error; the
value it quotes passes through ``REDACT`` and key-shaped text is masked, so an API key
pasted into the wrong field is never shown whole.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from timmy_magic.config.values import shown_input
from timmy_magic.model.errors import ConfigError
from timmy_magic.privacy.redact import REDACT, mask

TRUST_HINT = "run %llm trust to allow"
_KEY_SHAPED = re.compile(r"(sk|pk|rk)[-_][^\s'\"]{8,}|[A-Za-z0-9_-]{32,}")
"""A value an error must not echo: an API key pasted into the wrong field."""


def clean_name(name: object) -> bool:
    """Is ``name`` fit to name a provider in a message (one printable word, <= 64)?"""
    return isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable() \
        and not any(c.isspace() for c in name)


def provider_name(providers: list[Any], index: Any) -> str | None:
    """How a message names the entry ``providers[index]`` of the raw file."""
    if isinstance(index, int) and index < len(providers):
        entry = providers[index]
        if isinstance(entry, dict) and clean_name(entry.get("name")):
            return str(entry["name"])
        return f"#{index + 1}"
    return None


def where(source: str, providers: list[Any], path: tuple[Any, ...]) -> dict[str, str | None]:
    """``ConfigError``'s file, provider and field for a path into the raw file."""
    if path[:1] == ("providers",) and len(path) > 2:
        return {"file": source, "provider": provider_name(providers, path[1]),
                "field": ".".join(map(str, path[2:]))}
    return {"file": source, "provider": None, "field": ".".join(map(str, path))}


def one_line(exc: ValidationError, raw: dict[str, Any], source: str) -> ConfigError:
    """The first error of ``exc`` as a ``ConfigError``; ``raw`` is the file as validated."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    if loc[-1:] == ["[key]"]:  # a bad mapping key: name the mapping, the key is in "got"
        loc = loc[:-2]
    provider = None
    if loc[:1] == ["providers"] and len(loc) > 1:
        provider = provider_name(raw.get("providers") or [], loc[1])
        loc = loc[2:]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required"
    elif "input" in err and not isinstance(err["input"], (dict, list)) \
            and f"got {err['input']!r}" not in msg and "api_key" not in loc:
        msg = f"{msg} (got {shown_input(err['input'])})"
    msg = _KEY_SHAPED.sub(lambda m: mask(m.group()), msg)
    return ConfigError(REDACT(msg), file=source, provider=provider,
                       field=".".join(map(str, loc)) or None)
