"""What a provider ``type:`` name means before any code runs: plain data.

The config layer validates ``type:`` against this table and reads from it whether a
provider is a cloud one, its default URL, and whether it needs a key. Which adapter
serves a type is not here: ``providers/registry.py`` maps a type to the ``Backend``
factory, and its :class:`ProviderKind` (a :class:`ProviderType` with that factory) is what
built-ins and plugins register, into this one table.

A plugin package exposes an entry point in the group ``timmy_magic.providers`` whose object
is such a kind. Entry points are scanned only when a name is not in the table, so ``import
timmy_magic`` stays fast; a plugin that fails to load is named in a warning and skipped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

ENTRY_POINT_GROUP = "timmy_magic.providers"


@dataclass(frozen=True)
class ProviderType:
    """What the config and the router know about a ``type:`` before any I/O."""

    name: str
    cloud: bool
    default_url: str | None
    needs_key: bool
    key_env: str | None = field(default=None, kw_only=True)
    """The environment variable a "not configured" message suggests for the key."""


BUILT_IN: tuple[ProviderType, ...] = (
    ProviderType("vllm_mlx", cloud=False, default_url="http://127.0.0.1:8000",
                 needs_key=False),
    ProviderType("mlx_lm", cloud=False, default_url="http://127.0.0.1:8080", needs_key=False),
    ProviderType("llama_cpp", cloud=False, default_url="http://127.0.0.1:8080",
                 needs_key=False),
    ProviderType("openai_compatible", cloud=False, default_url=None, needs_key=False),
    ProviderType("openai", cloud=True, default_url="https://api.openai.com/v1",
                 needs_key=True, key_env="OPENAI_API_KEY"),
    ProviderType("anthropic", cloud=True, default_url="https://api.anthropic.com",
                 needs_key=True, key_env="ANTHROPIC_API_KEY"),
    ProviderType("ollama", cloud=False, default_url="http://127.0.0.1:11434",
                 needs_key=False),
)
"""The types timmy-magic ships; ``providers/registry.py`` gives each its adapter."""

_TYPES: dict[str, ProviderType] = {t.name: t for t in BUILT_IN}
_scanned = False


def register(kind: ProviderType) -> None:
    """Add or replace the type ``kind.name``."""
    _TYPES[kind.name] = kind


def get(name: str) -> ProviderType | None:
    """The type called ``name``, looking through plugins if it is not known yet."""
    if name not in _TYPES:
        _load_entry_points()
    return _TYPES.get(name)


def known() -> list[str]:
    """Every type name, plugins included, sorted: what an unknown ``type:`` lists."""
    _load_entry_points()
    return sorted(_TYPES)


def _load_entry_points() -> None:
    global _scanned
    if _scanned:
        return
    _scanned = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the router
            warnings.warn(f"timmy-magic: provider plugin {ep.name!r} ({ep.value}) failed to "
                          f"load and is ignored: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if isinstance(obj, ProviderType):
            register(obj)
        else:
            warnings.warn(f"timmy-magic: provider plugin {ep.name!r} ({ep.value}) is a "
                          f"{type(obj).__name__}, not a ProviderKind, and is ignored",
                          stacklevel=2)
