"""timmy_magic: a cascade router for local and cloud LLMs, as an IPython extension.

    %load_ext timmy_magic

Plain Python:

    from timmy_magic import Router
    with Router.from_config() as router:
        print(router.complete("Say hello").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, load_config
from .errors import ConfigError, NoProviderAvailable, PinnedProviderFailed, TimmyError
from .router import Router
from .types import ChatRequest, Delta, Done, Message, Result, Trying

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["ChatRequest", "Config", "ConfigError", "Delta", "Done", "Message",
           "NoProviderAvailable", "PinnedProviderFailed", "Result", "Router", "TimmyError",
           "Trying", "load_config", "load_ipython_extension", "unload_ipython_extension"]
__version__ = "0.1.0"


def load_ipython_extension(ip: InteractiveShell) -> None:
    from .magics import load

    load(ip)


def unload_ipython_extension(ip: InteractiveShell) -> None:
    from .magics import unload

    unload(ip)


def __getattr__(name: str) -> Any:
    if name in ("last", "router", "panel"):
        from . import magics

        return getattr(magics, name)
    raise AttributeError(name)
