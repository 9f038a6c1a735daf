"""Which providers.yaml to read, whether to trust it, and reading it.

Which file: an explicit path, else ``$TIMMY_PROVIDERS``, else ``./providers.yaml``, else the
user config dir (``platformdirs.user_config_dir("timmy-magic")/providers.yaml``), else the
default shipped inside the package.

Trust (like direnv or VS Code workspace trust): ``./providers.yaml`` often comes with a
freshly cloned repository, so a file is *trusted* only if it is the packaged default (or
has its exact bytes), lives in the user config dir, is named by ``$TIMMY_PROVIDERS`` or by
an explicit path, or was trusted with ``%llm trust`` (path and sha256 in ``trust.py``'s
store). An untrusted file loads without the parts that run code, read the environment or
choose which of the user's files to write (``parse.hold_back`` and ``expand.py`` say which).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from timmy_magic.config import trust
from timmy_magic.config.parse import parse_config
from timmy_magic.config.safe_yaml import MAX_CONFIG_BYTES
from timmy_magic.config.schema import Config
from timmy_magic.model.errors import ConfigError

ENV_VAR = "TIMMY_PROVIDERS"


def packaged_default() -> Path:
    return Path(__file__).resolve().parents[1] / "providers.yaml"


def user_config_path() -> Path:
    return trust.config_dir() / "providers.yaml"


def shown_path(source: str) -> str:
    """A config path as the user reads it: under the home directory as ``~/...`` (the
    user config file reads ``~/.config/timmy-magic/providers.yaml``, as the docs name it);
    any other path, or a source that is not a path, as it is."""
    home = Path.home()
    try:
        rest = Path(source).relative_to(home)
    except ValueError:
        return source
    return f"~/{rest.as_posix()}" if str(home) not in ("", "/") else source


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use, by the documented search order."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "providers.yaml", user_config_path()):
        if candidate.is_file():
            return candidate
    return packaged_default()


_SEARCHED: contextvars.ContextVar[bool] = contextvars.ContextVar("timmy_searched",
                                                                 default=False)


@contextmanager
def found_by_search() -> Iterator[None]:
    """Inside, a path given to ``load_config`` counts as found by the search, not named
    by the user, so naming it grants no trust. ``%llm reload`` (no PATH) and ``%llm
    untrust`` re-read a searched file through ``Router.reload(path)`` this way."""
    token = _SEARCHED.set(True)
    try:
        yield
    finally:
        _SEARCHED.reset(token)


def trust_reason(path: Path, data: bytes, *, named: bool = False) -> str:
    """Why the file at ``path`` holding ``data`` is trusted, or "" if it is not."""
    real = path.expanduser().resolve()
    if trust.digest(data) == _packaged_digest():
        return "the packaged default"
    home = trust.config_dir()
    if any(p.is_relative_to(d) for p in (path.expanduser().absolute(), real)
           for d in (home, home.resolve())):
        return "in the user config dir"
    env = os.environ.get(ENV_VAR)
    if env and Path(env).expanduser().resolve() == real:
        return f"named by ${ENV_VAR}"
    if named:
        return "named explicitly"
    if trust.is_trusted(real, trust.digest(data)):
        return "trusted with %llm trust"
    return ""


def _packaged_digest() -> str:
    return trust.digest(packaged_default().read_bytes())


def load_config(path: str | os.PathLike[str] | None = None, *,
                named: bool | None = None) -> Config:
    """Load and validate providers.yaml (``path``, else the search). ``named``: the user
    named ``path`` (trusting it); by default true when a path is given, outside
    ``found_by_search()``."""
    p = find_config(path)
    if p.exists() and not p.is_file():  # a FIFO would block, /dev/zero never end
        raise ConfigError("is not a regular file", file=str(p))
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(p)) from None
    if named is None:
        named = path is not None and not _SEARCHED.get()
    reason = trust_reason(p, data, named=named)
    cfg = parse_config(data, source=str(p), trusted=bool(reason))
    return cfg.model_copy(update={"trusted_by": reason})
