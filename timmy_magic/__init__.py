"""timmy_magic: a cascade router for local and cloud LLMs, as an IPython extension.

    %load_ext timmy_magic

Plain Python:

    from timmy_magic import Router
    with Router.from_config() as router:
        print(router.complete("Say hello").text)

Importing the package is cheap: every name below is imported on first use, so the
SDKs, pydantic and widgets load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from timmy_magic._version import __version__ as __version__

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from IPython.core.interactiveshell import InteractiveShell

    from timmy_magic.batch import MapResult, map_results  # noqa: F401
    from timmy_magic.config import Config, load_config  # noqa: F401
    from timmy_magic.evals import Evaluation, judge  # noqa: F401
    from timmy_magic.model.chat import (  # noqa: F401
        ChatRequest,
        Delta,
        Done,
        Message,
        Result,
        Status,
        Trying,
    )
    from timmy_magic.model.errors import (  # noqa: F401
        ConfigError,
        NoProviderAvailable,
        PinnedProviderFailed,
        TimmyError,
    )
    from timmy_magic.notebook.api import evaluate, map  # noqa: F401
    from timmy_magic.routing.router import Router  # noqa: F401

_LAZY = {
    "Config": "config", "load_config": "config",
    "ConfigError": "model.errors", "NoProviderAvailable": "model.errors",
    "PinnedProviderFailed": "model.errors", "TimmyError": "model.errors",
    "Router": "routing.router",
    "ChatRequest": "model.chat", "Delta": "model.chat", "Done": "model.chat",
    "Message": "model.chat", "Result": "model.chat", "Status": "model.chat",
    "Trying": "model.chat",
    "last": "notebook", "get_router": "notebook", "panel": "notebook",
    "map": "notebook.api", "map_results": "batch", "MapResult": "batch",
    "evaluate": "notebook.api", "judge": "evals", "Evaluation": "evals",
}
__all__ = [name for name in (*_LAZY, "load_ipython_extension", "unload_ipython_extension")
           if name != "map"]
"""``from timmy_magic import *`` exports these; ``map`` is left out so it cannot shadow the
builtin (``timmy_magic.map`` is the way to call it)."""


def load_ipython_extension(ip: InteractiveShell) -> None:
    from timmy_magic.notebook import load

    load(ip)


def unload_ipython_extension(ip: InteractiveShell) -> None:
    from timmy_magic.notebook import unload

    unload(ip)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'timmy_magic' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
