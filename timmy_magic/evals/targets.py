"""What an evaluation compares: targets, each a provider and perhaps a model.

``"provider"``, ``"provider:model"`` (split at the first colon, so Ollama's ``llama3:8b``
and any model name holding a colon stay whole) or a ``(provider, model)`` tuple.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from timmy_magic.model.errors import TimmyError
from timmy_magic.text.markup import shorten


class EvalError(TimmyError, ValueError):
    """An evaluation cannot start or be read (a bad target, score or option); one line."""


@dataclass(frozen=True, slots=True)
class Target:
    """One provider, and the model asked of it (None: its default model)."""

    provider: str
    model: str | None = None

    @property
    def label(self) -> str:
        """``provider`` or ``provider:model``: how the target is written and shown."""
        return self.provider if self.model is None else f"{self.provider}:{self.model}"

    @classmethod
    def of(cls, spec: Any) -> Target:
        """A target from ``"provider"``, ``"provider:model"`` or ``(provider, model)``."""
        if isinstance(spec, Target):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            provider, model = spec
            if model is not None and not (isinstance(model, str) and model.strip()):
                raise EvalError(f"evaluate: the model of target {spec!r} must be a name "
                                f"or None")
        elif isinstance(spec, str):
            provider, sep, rest = spec.strip().partition(":")
            model = rest.strip() if sep else None
            if sep and not model:
                raise EvalError(f"evaluate: target {spec!r} names no model after the colon")
        else:
            raise EvalError(f"evaluate: a target is 'provider', 'provider:model' or a "
                            f"(provider, model) tuple, not {type(spec).__name__}")
        if not isinstance(provider, str) or not provider.strip():
            raise EvalError(f"evaluate: target {shorten(repr(spec), 80)} names no provider")
        return cls(provider.strip(), model.strip() if isinstance(model, str) else None)


def targets_of(specs: Any) -> tuple[Target, ...]:
    """The targets of ``specs`` (one spec alone or an iterable of them), each once."""
    if isinstance(specs, (str, Target)):  # one target alone
        specs = [specs]
    if not isinstance(specs, Iterable):
        raise EvalError(f"evaluate: targets must be a list of 'provider[:model]', not "
                        f"{type(specs).__name__}")
    out: list[Target] = []
    for spec in specs:
        t = Target.of(spec)
        if t in out:
            raise EvalError(f"evaluate: target {t.label!r} is given twice")
        out.append(t)
    if not out:
        raise EvalError("evaluate: no targets: name at least one 'provider[:model]'")
    return tuple(out)
