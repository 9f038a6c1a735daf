"""The cache's values: a recorded answer, the store's statistics, and a replay miss.

**The value** is the answer's text, usage, model, provider, timings, the UTC date it was
recorded and a summary of the prompt (the user's request, without the notebook context
put before it, at most 200 characters, for ``stats`` and replay misses). Only a complete,
non-empty answer is recorded (not a failed, partial, interrupted or invalid one, nor one
with no text: a reasoning model that only thought), and an empty one found in a file is
a miss. Text, summary and names pass ``REDACT`` on the way in: the cache is a file that
lives for months and may be committed next to a notebook, so a key the model (or the
prompt) echoes must not reach it. The price is that a replayed answer shows ``sk-...1234``
where the live one showed the key, as errors and logs already do.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from timmy_magic.cache.keys import RequestFields, canonical_json
from timmy_magic.cache.settings import ENV_VAR
from timmy_magic.model.chat import Result, RouteTrace, Timings, Usage
from timmy_magic.model.errors import TimmyError
from timmy_magic.model.tools import ToolCall
from timmy_magic.privacy.redact import REDACT
from timmy_magic.text.markup import shorten

MISS_CHARS = 80
"""How much of the prompt a replay miss shows."""
RECORD_IN_A_CELL = f"run `%llm cache on` (or set {ENV_VAR}=on) and run the cell once"
RECORD_FROM_PYTHON = "set `cache: {mode: on}` in providers.yaml and ask once"


class ReplayMiss(TimmyError):
    """Replay mode found no recorded answer for this request: nothing was sent."""

    def __init__(self, summary: str, provider: str | None, model: str | None, *,
                 problem: str | None = None, how: str = RECORD_IN_A_CELL) -> None:
        self.summary, self.provider, self.model = summary, provider, model
        self.problem = problem
        shown = shorten(summary, MISS_CHARS)
        target = f"provider {provider or 'cascade'}, model {model or 'default'}"
        why = f"; the cache is unavailable ({problem})" if problem else ""
        super().__init__(
            f"replay: no recorded answer for {shown!r} ({target}){why}; to record it, {how}")

    @classmethod
    def for_request(cls, fields: RequestFields, *, problem: str | None = None) -> ReplayMiss:
        try:
            summary = fields.summary()
        except Exception:  # noqa: BLE001 - a miss must be shown whatever the request holds
            summary = "(this request)"
        return cls(summary, fields.provider, fields.model, problem=problem)

    def from_python(self) -> ReplayMiss:
        """The same miss, saying how to record it from a Python call."""
        return ReplayMiss(self.summary, self.provider, self.model, problem=self.problem,
                          how=RECORD_FROM_PYTHON)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One recorded answer. ``created`` is a UTC ISO date-time."""

    text: str
    provider: str | None
    model: str | None
    usage: Usage
    timings: Timings
    created: str
    summary: str = ""
    calls: tuple[ToolCall, ...] = ()
    """A tool turn: the calls the model asked for (a tool loop runs them again)."""

    @classmethod
    def from_result(cls, result: Result, fields: RequestFields, *,
                    now: float | None = None) -> CachedAnswer | None:
        """A complete answer as a cache value; None for a partial, failed or invalid one,
        and for one with no text (a usage chunk only, a reasoning model that only thought):
        replayed, it would answer ``''`` until the cache is cleared."""
        if not result.ok or not (result.text.strip() or result.calls):
            return None
        return cls(text=result.text, provider=result.provider, model=result.model,
                   usage=result.usage, timings=result.timings,
                   created=iso(time.time() if now is None else now),
                   summary=fields.summary(), calls=result.calls)

    def note(self) -> str:
        """For the footer: ``cached · local-gemma · 2025-05-01``."""
        return f"cached · {self.provider or 'unknown provider'} · {self.created[:10]}"

    def to_result(self, trace: RouteTrace | None = None) -> Result:
        """A Result with the recorded text, usage and timings, and ``note()`` as a note."""
        return Result(text=self.text, provider=self.provider, model=self.model,
                      usage=self.usage, timings=self.timings, trace=trace or RouteTrace(),
                      notes=((f"answered from the cache: recorded {self.created[:16]} UTC "
                              f"from {self.provider or 'an unknown provider'}"),),
                      cached=True, calls=self.calls)

    def redacted(self) -> CachedAnswer:
        return CachedAnswer(
            text=REDACT(self.text), provider=_redact_opt(self.provider),
            model=_redact_opt(self.model), usage=self.usage, timings=self.timings,
            created=self.created, summary=REDACT(self.summary), calls=self.calls)

    def to_json(self) -> str:
        u, t = self.usage, self.timings
        return canonical_json({
            "text": self.text, "provider": self.provider, "model": self.model,
            "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                      "estimated": u.estimated},
            "timings": {"ttft_s": _finite(t.ttft_s), "total_s": _finite(t.total_s) or 0.0,
                        "output_tokens_per_s": _finite(t.output_tokens_per_s)},
            "created": self.created, "summary": self.summary,
            **({"calls": [c.canonical() for c in self.calls]} if self.calls else {})})

    @classmethod
    def from_json(cls, text: str) -> CachedAnswer:
        """Raises ValueError (or KeyError/TypeError) when ``text`` is not a value we
        wrote."""
        d = json.loads(text)
        u, t = d["usage"], d["timings"]
        return cls(
            text=_str(d["text"]), provider=_opt_str(d["provider"]),
            model=_opt_str(d["model"]),
            usage=Usage(_opt_int(u["input_tokens"]), _opt_int(u["output_tokens"]),
                        bool(u["estimated"])),
            timings=Timings(_opt_float(t["ttft_s"]), _opt_float(t["total_s"]) or 0.0,
                            _opt_float(t["output_tokens_per_s"])),
            created=_str(d["created"]), summary=_str(d.get("summary", "")),
            calls=tuple(ToolCall(_str(c["id"]), _str(c["name"]), _str(c["arguments"]))
                        for c in d.get("calls", ())))


@dataclass(frozen=True, slots=True)
class CacheStats:
    path: Path
    available: bool
    entries: int
    bytes: int
    """Stored keys and values (what ``max_mb`` caps)."""
    file_bytes: int
    """The database on disk, with its WAL."""
    hits: int
    misses: int
    oldest: str | None
    newest: str | None
    max_mb: float
    ttl_days: float | None
    problem: str | None = None
    read_only: bool = False

    def lines(self) -> list[str]:
        state = ("unavailable" if not self.available else
                 "read-only" if self.read_only else "available")
        if self.problem:
            state += f" ({self.problem})"
        out = [f"cache {self.path}: {state}",
               (f"{self.entries} answers, {self.bytes / 1e6:.2f} MB of {self.max_mb:g} MB "
                f"({self.file_bytes / 1e6:.2f} MB on disk)"),
               f"this session: {self.hits} hits, {self.misses} misses"]
        if self.oldest:
            out.append(f"recorded {self.oldest} .. {self.newest}")
        if self.ttl_days is not None:
            out.append(f"answers expire after {self.ttl_days:g} days")
        return out


def iso(epoch: float) -> str:
    """A UTC ISO date-time, to the second."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _redact_opt(text: str | None) -> str | None:
    return None if text is None else REDACT(text)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _str(x: object) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected text, got {type(x).__name__}")
    return x


def _opt_str(x: object) -> str | None:
    return None if x is None else _str(x)


def _opt_int(x: object) -> int | None:
    if x is None:
        return None
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"expected an integer, got {type(x).__name__}")
    return x


def _opt_float(x: object) -> float | None:
    if x is None:
        return None
    if not isinstance(x, int | float) or isinstance(x, bool):
        raise TypeError(f"expected a number, got {type(x).__name__}")
    return float(x)
