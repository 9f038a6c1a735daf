"""``${VAR}`` and ``${VAR:-default}`` in providers.yaml.

In a trusted file every string is expanded from the environment. An unresolved variable
is an error in an enabled provider, except in ``api_key`` where it leaves the provider
"not configured" (shown, never used); in a disabled provider it is ignored.

An untrusted file expands nothing: a ``${VAR:-default}`` takes its default, an unexpanded
``api_key`` leaves its provider "not configured", and any other unexpanded provider field
disables that provider (``parse.py`` leaves it out if it is then invalid).

In every file, a variable whose name says secret (``redact.is_secret_name``: ``*_KEY``,
``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_PWD``, ``*_AUTH``...) may only be used in
``api_key`` and ``headers``: a key in a URL or a command would leave the machine or show
in a process list. A secret-named variable's value is registered with ``REDACT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from timmy_magic.config.errors import TRUST_HINT, provider_name, where
from timmy_magic.config.values import FALSE_WORDS, Expanded
from timmy_magic.model.errors import ConfigError
from timmy_magic.privacy.redact import REDACT, is_secret_name

MAX_CONFIG_NODES = 100_000
"""Values after YAML aliases are expanded: a small file of nested aliases ("billion
laughs") would otherwise take forever to walk and validate."""
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Expansion:
    """What expanding one file found, and what an untrusted file did not get."""

    source: str
    env: dict[str, str]
    trusted: bool
    providers: list[Any]
    unresolved: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    """(path, VAR) of variables with no value (in an untrusted file: every one)."""
    held: list[str] = field(default_factory=list)
    """What was held back, as ``Config.held_back`` says it."""
    withheld: dict[int, str] = field(default_factory=dict)
    """Untrusted: provider index -> the variable left unexpanded in it (not in api_key)."""
    nodes: int = 0

    def where(self, path: tuple[Any, ...]) -> dict[str, str | None]:
        """ConfigError's file, provider and field for a path into the file."""
        return where(self.source, self.providers, path)


def expand(node: Any, path: tuple[Any, ...], out: Expansion) -> Any:
    """``node`` (at ``path`` in the file) with every ``${VAR}`` expanded into an
    ``Expanded`` string; what it could not expand goes to ``out.unresolved``."""
    out.nodes += 1
    if out.nodes > MAX_CONFIG_NODES:
        raise ConfigError(f"more than {MAX_CONFIG_NODES} values once YAML aliases are "
                          "expanded (an alias bomb?)", file=out.source)
    if isinstance(node, str):
        if "${" not in node:
            return node
        return Expanded(_VAR.sub(lambda m: _substitute(m, path, out), node))
    if isinstance(node, dict):
        return {k: expand(v, (*path, k), out) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, (*path, i), out) for i, v in enumerate(node)]
    return node


def _substitute(m: re.Match[str], path: tuple[Any, ...], out: Expansion) -> str:
    name, default = m.group(1), m.group(2)
    if is_secret_name(name, env=True) and not (path[:1] == ("providers",) and len(path) > 2
                                               and path[2] in ("api_key", "headers")):
        raise ConfigError(f"${{{name}}} looks like a secret: it may only be used in api_key "
                          "or headers, never in a URL, a command or any other field",
                          **out.where(path))
    value = out.env.get(name)
    if not out.trusted:
        if default is None:
            out.unresolved.append((path, name))
            return m.group()  # shown as written: the provider it is in is disabled
        if value and value != default:
            out.held.append(f"${{{name}}}{_in_provider(path, out)} (its default used)")
        return default
    if value:
        if is_secret_name(name, env=True):
            REDACT.add([value])
        return value
    if default is not None:
        return default
    out.unresolved.append((path, name))
    return ""


def _in_provider(path: tuple[Any, ...], out: Expansion) -> str:
    if path[:1] == ("providers",) and len(path) > 1:
        return f" in '{provider_name(out.providers, path[1])}'"
    return f" in {'.'.join(map(str, path))}"


def _disabled(entry: dict[str, Any]) -> bool:
    enabled = entry.get("enabled", True)
    return enabled is False or (isinstance(enabled, Expanded)
                                and enabled.strip().lower() in FALSE_WORDS)


def check_unresolved(exp: Expansion, providers: list[Any]) -> None:
    """Settle each unresolved variable of the expanded ``providers``: an error, a provider
    "not configured" (``api_key``), or, in an untrusted file, a provider disabled."""
    for path, var in exp.unresolved:
        if path[:1] != ("providers",) or len(path) < 3:
            why = "is not set" if exp.trusted else f"is not expanded: the file is not " \
                f"trusted ({TRUST_HINT}, or give a default with ${{{var}:-value}})"
            raise ConfigError(f"${{{var}}} {why}", **exp.where(path))
        entry = providers[path[1]]
        if not exp.trusted and path[2] != "api_key":
            exp.withheld.setdefault(path[1], var)
        if not isinstance(entry, dict) or _disabled(entry):
            continue
        held = f"${{{var}}}{_in_provider(path, exp)}"
        if path[2] == "api_key":
            entry["api_key"] = None
            entry["missing_env"] = tuple(dict.fromkeys((*entry.get("missing_env", ()), var)))
            if not exp.trusted:
                exp.held.append(held)
            continue
        if not exp.trusted:
            entry["enabled"] = False
            exp.held.append(f"{held} (disabled)")
            continue
        raise ConfigError(f"${{{var}}} is not set (set it, give a default with "
                          f"${{{var}:-value}}, or disable the provider)", **exp.where(path))
