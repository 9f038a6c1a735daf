"""Where the cache's settings come from, in order.

One settings type: ``CacheConfig`` (the ``cache:`` section of providers.yaml, validated
and defaulted in ``timmy_magic.config``; off, the user cache dir, no TTL, 200 MB). This
module adds the environment over it and nothing else; each later source wins:

**The file** (``path``): ``cache.path`` in providers.yaml < ``$TIMMY_CACHE_PATH``; none
set, the user cache dir (``default_path``). One file for every request of a session.

**The mode of a Python call** (``Router.complete``, ``acomplete``, ``stream``,
``astream``): ``cache.mode`` in providers.yaml < the call's ``cache=`` argument
(``cell_mode``).

**The mode of a cell** (``%%llm``, ``timmy_magic.map``): ``cache.mode`` in providers.yaml
< ``$TIMMY_CACHE_MODE`` (``configured_mode``) < ``%llm cache on|off|replay`` for the
session < ``--cache`` / ``--no-cache`` (``cell_mode``).

``$TIMMY_CACHE_MODE`` is the notebook's switch: a notebook runs in replay without editing
providers.yaml, while the Python calls it makes keep following providers.yaml (the
tutorials show failures with them, live, in their replays too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from timmy_magic.config import CacheConfig
from timmy_magic.model.errors import TimmyError

CacheMode = Literal["off", "on", "replay"]
MODES: tuple[CacheMode, ...] = ("off", "on", "replay")
ENV_VAR = "TIMMY_CACHE_MODE"
PATH_VAR = "TIMMY_CACHE_PATH"
FILE_NAME = "answers.sqlite3"
DEFAULT_MAX_MB: float = CacheConfig.model_fields["max_mb"].default
"""``CacheConfig``'s: the store's own default when it is opened without settings."""


class CacheSettingError(TimmyError, ValueError):
    """A cache setting from the environment (``$TIMMY_CACHE_MODE``) is invalid."""


def configured_mode(config: CacheConfig, env: Mapping[str, str] | None = None) -> CacheMode:
    """``$TIMMY_CACHE_MODE`` (case and spaces ignored; empty is unset), else
    ``config.mode``; checked by ``CacheConfig``'s own rule. An invalid value is a
    ``CacheSettingError``."""
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip().lower()
    if not value:
        return config.mode
    try:
        return CacheConfig.model_validate({"mode": value}).mode
    except ValidationError:
        raise CacheSettingError(
            f"{ENV_VAR}={value!r} is not a cache mode: use off, on or replay") from None


def configured_path(config: CacheConfig, env: Mapping[str, str] | None = None) -> Path:
    """``$TIMMY_CACHE_PATH``, else ``config.path``, else ``default_path()``; ``~``
    expanded."""
    path = (os.environ if env is None else env).get(PATH_VAR) or config.path
    return _expanded(path) if path else default_path()


def cell_mode(mode: CacheMode, flag: bool | None) -> CacheMode:
    """The mode for one cell or one call: ``--cache`` / ``cache=True`` turns an ``off``
    cache on for it, ``--no-cache`` / ``cache=False`` turns it off (even in replay: a
    live answer was asked for), None keeps ``mode``."""
    if flag is None:
        return mode
    if not flag:
        return "off"
    return "on" if mode == "off" else mode


def default_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("timmy-magic")) / FILE_NAME


def _expanded(path: str) -> Path:
    """``~`` expanded; a ``~user`` that does not exist is kept as written, and the cache
    says it cannot open it (one warning) instead of the request failing here."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)
