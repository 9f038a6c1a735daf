"""The answer cache as a cell uses it: the router's cache (``Router.cache``: the file,
the key, lookup and record) with what belongs to cells.

The mode of a cell: ``%llm cache on|off|replay`` for this session, else
``$TIMMY_CACHE_MODE``, else ``cache.mode`` in providers.yaml (off by default);
``--cache`` / ``--no-cache`` change it for one cell (``cache/settings.py`` has the
whole order). A cell keys with its output format, shows a bad setting as one usage
line, and shows ``REPLAY_HINTS`` under a replay miss. Having looked up itself, a cell
asks the router with ``cache=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from timmy_magic.cache import (
    AnswerCache,
    CacheMode,
    CacheSettingError,
    RequestCache,
    RequestFields,
    cell_mode,
    configured_mode,
)
from timmy_magic.model.chat import ChatRequest, Result
from timmy_magic.model.schema import Schema

if TYPE_CHECKING:
    from timmy_magic.notebook.session import Session

REPLAY_HINTS = (
    ("Replay answers only from the cache, so a notebook runs offline and the same: this "
     "request was never recorded (or was asked with other options)."),
    "Record it: `%llm cache on` (or `TIMMY_CACHE_MODE=on`), run the cell once, then replay.",
    "Ask live just this once: add `--no-cache` to the cell.",
)


class CellCache:
    def __init__(self, ext: Session) -> None:
        self.ext = ext
        self.session_mode: CacheMode | None = None
        """Set by ``%llm cache on|off|replay``: wins over the environment and the file."""

    @property
    def requests(self) -> RequestCache:
        return self.ext.router.cache

    def mode(self) -> CacheMode:
        if self.session_mode is not None:
            return self.session_mode
        try:
            return configured_mode(self.ext.router.config.cache)
        except CacheSettingError as exc:  # a bad $TIMMY_CACHE_MODE: one line, no answer
            raise UsageError(str(exc)) from None

    def cache(self) -> AnswerCache:
        return self.requests.store()

    def fields(self, req: ChatRequest, fmt: str,
               flag: bool | None = None) -> tuple[RequestFields | None, CacheMode]:
        """The request as the cache keys it (``RequestCache.fields``) with the cell's
        format, and the cell's mode."""
        mode = cell_mode(self.mode(), flag)
        return self.requests.fields(req, mode, fmt), mode

    def lookup(self, fields: RequestFields | None, mode: CacheMode,
               schema: Schema | None = None) -> Result | None:
        """The recorded answer as a Result, or None (ask live). ReplayMiss in replay."""
        return self.requests.lookup(fields, mode, schema)

    def record(self, fields: RequestFields | None, result: Result, mode: CacheMode) -> None:
        self.requests.record(fields, result, mode)

    def close(self) -> None:
        self.requests.close()
