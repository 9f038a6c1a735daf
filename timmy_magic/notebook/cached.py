"""The answer cache as a cell uses it: which mode is in force, which file, and the
request fields that make the key.

The mode: ``%llm cache on|off|replay`` for this session, else ``$TIMMY_CACHE_MODE``, else
``cache.mode`` in providers.yaml (off by default); ``--cache`` / ``--no-cache`` change it
for one cell. The file: ``$TIMMY_CACHE_PATH``, else ``cache.path``, else the user cache
dir. The cache is opened on first use (``%load_ext`` stays fast) and opened again when a
reload names another file.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from timmy_magic.cache import (
    AnswerCache,
    CacheMode,
    CacheSettingError,
    CacheSettings,
    ReplayMiss,
    RequestFields,
    cell_mode,
)
from timmy_magic.model.schema import InvalidAnswer, Schema
from timmy_magic.model.chat import ChatRequest, Result

if TYPE_CHECKING:
    from timmy_magic.notebook.cell import TimmyMagics

PATH_VAR = "TIMMY_CACHE_PATH"
REPLAY_HINTS = (
    ("Replay answers only from the cache, so a notebook runs offline and the same: this "
     "request was never recorded (or was asked with other options)."),
    "Record it: `%llm cache on` (or `TIMMY_CACHE_MODE=on`), run the cell once, then replay.",
    "Ask live just this once: add `--no-cache` to the cell.",
)


def _expanded(path: str) -> Path:
    """``~`` expanded; a ``~user`` that does not exist is kept as written, and the cache
    says it cannot open it (one warning) instead of the cell failing here."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


class CellCache:
    def __init__(self, ext: TimmyMagics) -> None:
        self.ext = ext
        self.session_mode: CacheMode | None = None
        """Set by ``%llm cache on|off|replay``: wins over the environment and the file."""
        self._cache: AnswerCache | None = None

    def settings(self) -> CacheSettings:
        c = self.ext.router.config.cache
        path = os.environ.get(PATH_VAR) or c.path
        try:
            return CacheSettings(_expanded(path) if path else None, c.mode, c.ttl_days,
                                 c.max_mb)
        except CacheSettingError as exc:
            raise UsageError(str(exc)) from None

    def mode(self) -> CacheMode:
        if self.session_mode is not None:
            return self.session_mode
        try:
            return self.settings().resolve_mode()
        except CacheSettingError as exc:  # a bad $TIMMY_CACHE_MODE: one line, no answer
            raise UsageError(str(exc)) from None

    def cache(self) -> AnswerCache:
        settings = self.settings()
        path = settings.resolved_path()
        if self._cache is None or self._cache.path != path:
            self.close()
            self._cache = AnswerCache.from_settings(settings)
        return self._cache

    def fields(self, req: ChatRequest, fmt: str,
               flag: bool | None = None) -> tuple[RequestFields | None, CacheMode]:
        """The request as the cache keys it: as it is sent, every default applied
        (``RequestFields.resolved``: the model's max_tokens, temperature, stop, params and
        mode from providers.yaml, ``cascade.default_max_tokens``), so a changed
        providers.yaml misses instead of replaying an answer asked another way."""
        mode = cell_mode(self.mode(), flag)
        if mode == "off":
            return None, mode
        return RequestFields.resolved(req, self.ext.router.config, fmt), mode

    def lookup(self, fields: RequestFields | None, mode: CacheMode,
               schema: Schema | None = None) -> Result | None:
        """The recorded answer as a Result, or None (ask live). ReplayMiss in replay.
        With ``schema``, its data is validated again (a recorded answer is text; one the
        schema no longer takes is a miss)."""
        if fields is None:
            return None
        hit = self.cache().lookup(fields, mode)
        if hit is None:
            return None
        result = hit.to_result()
        if schema is None:
            return result
        try:
            return replace(result, data=schema.validate(result.text))
        except InvalidAnswer:
            if mode == "replay":
                raise ReplayMiss.for_request(fields, problem="the recorded answer does not "
                                             "match the schema now") from None
            return None

    def record(self, fields: RequestFields | None, result: Result, mode: CacheMode) -> None:
        if fields is not None:
            self.cache().record(fields, result, mode)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
