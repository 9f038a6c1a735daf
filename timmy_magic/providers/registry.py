"""``type:`` name -> the adapter that serves it. Built-ins register exactly as plugins do.

What a type *is* (cloud or local, default URL, needs a key) is plain data in the config
layer, ``config/provider_types.py``, which validates ``type:`` without importing any
provider code. This module adds the adapter: a :class:`ProviderKind` is a
:class:`ProviderType` with the ``"module:callable"`` that builds its ``Backend``, imported
on first use so heavy SDKs load only when a provider of the type is used. A plugin package
exposes a ``ProviderKind`` under the entry-point group ``timmy_magic.providers``
(``ENTRY_POINT_GROUP``); the config layer finds it there when a ``type:`` is not built in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timmy_magic.config import provider_types
from timmy_magic.config.provider_types import ENTRY_POINT_GROUP, ProviderType

if TYPE_CHECKING:
    from timmy_magic.providers.base import Backend

__all__ = ["ENTRY_POINT_GROUP", "ProviderKind", "get", "known", "load_factory", "register"]


@dataclass(frozen=True)
class ProviderKind(ProviderType):
    """A provider type and the adapter that serves it."""

    factory: str
    """``"module:callable"`` taking (ProviderConfig, endpoint_url, timeouts) -> Backend."""

    def load_factory(self) -> Callable[..., Backend]:
        mod, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]


def register(kind: ProviderKind) -> ProviderKind:
    provider_types.register(kind)
    return kind


def get(name: str) -> ProviderKind | None:
    """The kind called ``name``; None if no type has that name or it has no adapter."""
    kind = provider_types.get(name)
    return kind if isinstance(kind, ProviderKind) else None


def known() -> list[str]:
    return provider_types.known()


def load_factory(name: str) -> Callable[..., Backend]:
    """The ``Backend`` factory of the type ``name``. Raises LookupError if none serves it
    (a plugin that declared a plain ``ProviderType``: data without an adapter)."""
    kind = get(name)
    if kind is None:
        raise LookupError(f"no adapter serves provider type {name!r}")
    return kind.load_factory()


_OAI = "timmy_magic.providers.openai_compat:make_backend"
ADAPTERS = {
    "vllm_mlx": _OAI,
    "mlx_lm": _OAI,
    "llama_cpp": _OAI,
    "openai_compatible": _OAI,
    "openai": _OAI,
    "anthropic": "timmy_magic.providers.anthropic:make_backend",
    "ollama": "timmy_magic.providers.ollama:make_backend",
}
"""The adapter of each built-in type (``provider_types.BUILT_IN``), one entry for each."""

for _t in provider_types.BUILT_IN:
    register(ProviderKind(_t.name, cloud=_t.cloud, default_url=_t.default_url,
                          needs_key=_t.needs_key, key_env=_t.key_env,
                          factory=ADAPTERS[_t.name]))
