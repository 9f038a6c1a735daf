"""Secrets stay in the kernel: masking for everything sent to a model as prompt or
context (issue 13).

Masked with ``***``: every value registered with ``secrets.REDACT`` (each configured key,
header and URL secret, with its encodings), values (>= 8 characters) of environment
variables whose names look secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSW*``,
``*CREDENTIAL*``), secrets passed in, and what plainly is a credential (``sk-...``,
``Bearer ...``, a URL password). ``name=value`` is *not* masked here: in code it is an
argument (``api_key=key``), not a secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import secrets as _secrets

MASK = _secrets.HIDDEN
SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
MIN_ENV_SECRET = 8
_T = TypeVar("_T")


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values (>= 8 characters) of environment variables whose names look secret."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items()
            if SECRET_ENV_NAME.search(k) and len(v) >= MIN_ENV_SECRET]


def _registered_secrets() -> list[str]:
    """Every form of every secret a loaded config registered with ``secrets.REDACT``."""
    return list(_secrets.REDACT._table[1])


def mask_secrets(text: str, extra_secrets: Iterable[str] = (), *,
                 environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``text`` with every secret replaced by ``***``, and how many were replaced."""
    values = {s for s in extra_secrets if s and len(s) >= 4}
    values.update(_registered_secrets(), secret_env_values(environ))
    n = 0
    if values:
        pattern = re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True))))
        text, n = pattern.subn(MASK, text)
    text, g = _mask_credentials(text)
    return text, n + g


def _mask_credentials(text: str) -> tuple[str, int]:
    """``secrets``' generic patterns (sk- keys, Bearer/Basic, URL passwords) except
    ``name=value``, which in code is an argument, not a secret."""
    if not _secrets._may_hold_credential(text):
        return text, 0
    count = 0

    def one(m: re.Match[str]) -> str:
        nonlocal count
        if m.group("value") is not None:
            return m.group()
        out = _secrets._generic(m)
        count += out != m.group()
        return out

    return _secrets._GENERIC.sub(one, text), count


def _mask_value(value: _T, secrets: Sequence[str], environ: Mapping[str, str] | None
                ) -> tuple[_T, int]:
    """Mask every string in a value: a str, a tuple of them, a dataclass's fields."""
    if isinstance(value, str):
        masked, n = mask_secrets(value, secrets, environ=environ)
        return masked, n  # type: ignore[return-value]
    if isinstance(value, tuple):
        pairs = [_mask_value(v, secrets, environ) for v in value]
        return tuple(p[0] for p in pairs), sum(p[1] for p in pairs)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes: dict[str, Any] = {}
        total = 0
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new, n = _mask_value(old, secrets, environ)
            if n:
                changes[f.name], total = new, total + n
        return (dataclasses.replace(value, **changes) if changes else value), total
    return value, 0


def mask_item(item: _T, extra_secrets: Sequence[str] = (), *,
              environ: Mapping[str, str] | None = None) -> tuple[_T, int]:
    """An item (or any dataclass, string or tuple) with every string field masked. The
    count is of the text sent (a secret in both ``text`` and ``source`` counts once)."""
    masked, _ = _mask_value(item, extra_secrets, environ)
    text = getattr(item, "text", item if isinstance(item, str) else "")
    return masked, mask_secrets(text, extra_secrets, environ=environ)[1]
