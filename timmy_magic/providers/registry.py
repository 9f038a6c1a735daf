"""``type:`` name -> provider kind. Built-ins register exactly as plugins do.

A plugin package exposes an entry point in the group ``timmy_magic.providers`` whose object
is a :class:`ProviderKind`; entry points are only scanned when a type is not built in, so
``import timmy_magic`` stays fast.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timmy_magic.providers.base import Backend

ENTRY_POINT_GROUP = "timmy_magic.providers"


@dataclass(frozen=True)
class ProviderKind:
    """What the router needs to know about a ``type:`` before any I/O."""

    name: str
    cloud: bool
    default_url: str | None
    needs_key: bool
    factory: str
    """``"module:callable"`` taking (ProviderConfig, endpoint_url, redact) -> Backend;
    imported on first use so heavy SDKs load only when a provider of the type is used."""
    key_env: str | None = None

    def load_factory(self) -> Callable[..., Backend]:
        mod, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]


_KINDS: dict[str, ProviderKind] = {}


def register(kind: ProviderKind) -> ProviderKind:
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> ProviderKind | None:
    if name not in _KINDS:
        _load_entry_points()
    return _KINDS.get(name)


def known() -> list[str]:
    _load_entry_points()
    return sorted(_KINDS)


_scanned = False


def _load_entry_points() -> None:
    global _scanned
    if _scanned:
        return
    _scanned = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the router: say which
            warnings.warn(f"timmy-magic: provider plugin {ep.name!r} ({ep.value}) failed to "
                          f"load and is ignored: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if isinstance(obj, ProviderKind):
            register(obj)
        else:
            warnings.warn(f"timmy-magic: provider plugin {ep.name!r} ({ep.value}) is a "
                          f"{type(obj).__name__}, not a ProviderKind, and is ignored",
                          stacklevel=2)


_OAI = "timmy_magic.providers.openai_compat:make_backend"
for _k in (
    ProviderKind("vllm_mlx", cloud=False, default_url="http://127.0.0.1:8000", needs_key=False,
                 factory=_OAI),
    ProviderKind("mlx_lm", cloud=False, default_url="http://127.0.0.1:8080", needs_key=False,
                 factory=_OAI),
    ProviderKind("llama_cpp", cloud=False, default_url="http://127.0.0.1:8080", needs_key=False,
                 factory=_OAI),
    ProviderKind("openai_compatible", cloud=False, default_url=None, needs_key=False,
                 factory=_OAI),
    ProviderKind("openai", cloud=True, default_url="https://api.openai.com/v1", needs_key=True,
                 factory=_OAI, key_env="OPENAI_API_KEY"),
    ProviderKind("anthropic", cloud=True, default_url="https://api.anthropic.com",
                 needs_key=True, factory="timmy_magic.providers.anthropic:make_backend",
                 key_env="ANTHROPIC_API_KEY"),
    ProviderKind("ollama", cloud=False, default_url="http://127.0.0.1:11434", needs_key=False,
                 factory="timmy_magic.providers.ollama:make_backend"),
):
    register(_k)
