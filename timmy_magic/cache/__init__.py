"""The answer cache: the same request answered again from disk, instantly and offline.

Three modes: ``off`` (the cache is not touched), ``on`` (a hit is answered from the
cache, a miss goes to the providers and a complete answer is recorded) and ``replay``
(answers come only from the cache; a miss is a ``ReplayMiss`` and nothing is sent). The
settings are ``CacheConfig``'s (``cache:`` in providers.yaml), with the environment over
them in the order ``settings`` documents.

The package, one concern a module:

    settings.py       modes, where the file and the mode come from ($TIMMY_CACHE_PATH,
                      $TIMMY_CACHE_MODE), CacheSettingError
    keys.py           RequestFields, the canonical request and its key, prompt summaries
    answers.py        CachedAnswer (the value), CacheStats, ReplayMiss
    files.py          opening a file: whose it is, a new one, recovery, read-only
    store.py          AnswerCache: the SQLite store (get, put, eviction, lookup, record)
    request_cache.py  RequestCache: a ChatRequest keyed, looked up and recorded, for the
                      router's calls and a cell's
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timmy_magic.cache.answers import CachedAnswer, CacheStats, ReplayMiss
from timmy_magic.cache.keys import (
    SUMMARY_CHARS,
    RequestFields,
    canonical_json,
    request_key,
    request_summary,
    sent_settings,
)
from timmy_magic.cache.request_cache import RequestCache
from timmy_magic.cache.settings import (
    ENV_VAR,
    MODES,
    PATH_VAR,
    CacheMode,
    CacheSettingError,
    cell_mode,
    configured_mode,
    configured_path,
    default_path,
)

if TYPE_CHECKING:
    from timmy_magic.cache.files import APPLICATION_ID
    from timmy_magic.cache.store import AnswerCache

_ON_FIRST_USE = {"AnswerCache": "store", "APPLICATION_ID": "files"}
"""The SQLite store and its files, imported when first asked for: a router that never
opens its cache (``cache: off``, the default) does not import sqlite3."""


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

__all__ = [
    "APPLICATION_ID",
    "ENV_VAR",
    "MODES",
    "PATH_VAR",
    "SUMMARY_CHARS",
    "AnswerCache",
    "CacheMode",
    "CacheSettingError",
    "CacheStats",
    "CachedAnswer",
    "ReplayMiss",
    "RequestCache",
    "RequestFields",
    "canonical_json",
    "cell_mode",
    "configured_mode",
    "configured_path",
    "default_path",
    "request_key",
    "request_summary",
    "sent_settings",
]
