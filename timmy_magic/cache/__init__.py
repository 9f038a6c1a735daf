"""The answer cache: the same request answered again from disk, instantly and offline.

Three modes (``CacheSettings.mode``, overridden by ``$TIMMY_CACHE_MODE``):

- ``off``: the cache is not touched;
- ``on``: a hit is answered from the cache, a miss goes to the providers and a complete
  answer is recorded;
- ``replay``: answers come only from the cache (no provider is ever contacted); a miss is a
  ``ReplayMiss`` naming what was asked and how to record it. TTL does not apply: a replay
  file recorded months ago for a tutorial must still replay.

**The key** (``request_key``) is the SHA-256 of the canonical JSON (sorted keys, no
whitespace, UTF-8) of the request as it is sent, after every default is applied
(``RequestFields.resolved``, the defaults ``attempt.py`` applies): the messages (role and
content, the system prompt and earlier turns included; OpenAI content parts made of text
only are joined, as the adapters join them), the model, temperature and max_tokens as
resolved (the cell's, else the model's in providers.yaml, else
``cascade.default_max_tokens``), the model's ``stop``, ``params`` and API mode (chat or
completion), the provider and its type, the JSON schema and the output format. A cell
sent through the cascade keys on what each enabled provider would be sent. So raising a
model's ``max_tokens`` and reloading misses instead of replaying the answer cut at the
old cap. Never an API key, a header or a URL: ``RequestFields`` has no place for one.

**The value** is the answer's text, usage, model, provider, timings, the UTC date it was
recorded and a summary of the prompt (the user's request, without the notebook context
put before it, at most 200 characters, for ``stats`` and replay misses). Only a complete,
non-empty answer is recorded (not a failed, partial, interrupted or invalid one, nor one
with no text: a reasoning model that only thought), and an empty one found in a file is
a miss. Text, summary and names pass ``secrets.REDACT`` on the way in: the cache is a file
that lives for months and may be committed next to a notebook, so a key the model (or the
prompt) echoes must not reach it. The price is that a replayed answer shows ``sk-...1234``
where the live one showed the key, as errors and logs already do.

**Why SQLite in WAL mode.** Two kernels may use one cache file at once. SQLite (standard
library) gives atomic writes and cross-process locking without a server; WAL lets readers
go on while one writer commits, and a busy timeout makes a writer wait for another instead
of failing. Writes take the lock up front (``BEGIN IMMEDIATE``) so a transaction never has
to upgrade a read lock, the one case where SQLite reports "database is locked" at once
without waiting. One connection per ``AnswerCache``, guarded by a lock, serves every thread.

**Never breaks a cell.** Every public method is one boundary (``_boundary``): whatever
goes wrong inside (a SQLite error, an ``OSError`` of a name too long, a ``RecursionError``
from an entry nested past the limit) is one warning line and a miss, and the answer is
asked live (in replay, a ``ReplayMiss`` naming the problem: replay never goes live). A
cache that cannot be opened at all is ``available == False``: every lookup is a miss,
nothing is stored, one warning says why. A cache file we may read but not write (a replay
file in a read-only checkout) is opened read-only: answers are served, none recorded.

**Never touches a file that is not ours.** The path may come from a mistake
(``$TIMMY_CACHE_PATH`` naming a notes file), so a file is used only when it is provably
ours: its SQLite header holds our ``application_id``. A damaged file is moved aside as
``<name>.corrupt-<timestamp>`` (with one warning, and a fresh cache made) only when it is
ours by its header, or is a SQLite-named file inside our own cache directory (the
default one) that SQLite cannot read or that holds nothing. Anything else is never moved,
renamed or written (a text or empty file elsewhere, another program's database anywhere,
a directory): the cache is off for the session, one warning says why. A new cache is built
whole in a temporary file (0600) and linked into place, so no other kernel ever sees it
half made and no file that appeared meanwhile is replaced; a directory we create is 0700:
the file holds prompts (kernel values, cells).

**Size.** ``max_mb`` caps the stored entries (key and value bytes); past it the least
recently used entries are evicted down to 90% of the cap. A hit refreshes the entry's
last-used time (at most once a minute, so reads rarely write).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeGuard, TypeVar, cast

from timmy_magic.context import INTRO
from timmy_magic.model.errors import InvalidRequest, TimmyError
from timmy_magic.providers.parts import openai_content
from timmy_magic.privacy.redact import REDACT, get_logger
from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage

if TYPE_CHECKING:
    from timmy_magic.config import CascadeConfig, Config, ProviderConfig

log = get_logger("timmy_magic.cache")

CacheMode = Literal["off", "on", "replay"]
MODES: tuple[CacheMode, ...] = ("off", "on", "replay")
ENV_VAR = "TIMMY_CACHE_MODE"
FILE_NAME = "answers.sqlite3"
DEFAULT_MAX_MB = 200.0
BUSY_TIMEOUT_S = 5.0
SUMMARY_CHARS = 200
MISS_CHARS = 80
"""How much of the prompt a replay miss shows."""
TOUCH_EVERY_S = 60.0
"""A hit rewrites the entry's last-used time only when it is older than this."""
EVICT_TO = 0.9
"""Eviction goes down to this fraction of the cap, so the next put does not evict again."""
KEY_VERSION = 2
"""Part of every key: a change to what the key covers changes this, and old entries miss.
2: the request as sent (defaults of the model and the cascade applied), not as asked."""
APPLICATION_ID = 0x544D4331  # "TMC1", in the database header: this file is ours
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
"""The SQLite database header: the application id is at offset 68."""
OWN_SUFFIXES = (".sqlite3", ".sqlite", ".db")
"""A file in our own cache directory with one of these names may be a damaged cache of
ours (moved aside); any other file there (the GGUF ``local.py`` keeps) is never touched."""
WARNING_CHARS = 300
REQUEST_HEADING = "\n\n### Request\n"
"""After ``context.INTRO`` and the context blocks, the user's request follows this
(``Context.prompt_text``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key       TEXT PRIMARY KEY,
    value     TEXT NOT NULL,
    created   REAL NOT NULL,
    last_used REAL NOT NULL,
    size      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_last_used ON answers (last_used);
"""


class CacheSettingError(TimmyError, ValueError):
    """A cache setting (from providers.yaml or ``$TIMMY_CACHE_MODE``) is invalid."""


class ReplayMiss(TimmyError):
    """Replay mode found no recorded answer for this request: nothing was sent."""

    def __init__(self, summary: str, provider: str | None, model: str | None, *,
                 problem: str | None = None) -> None:
        self.summary, self.provider, self.model = summary, provider, model
        shown = summary if len(summary) <= MISS_CHARS else summary[: MISS_CHARS - 1] + "…"
        target = f"provider {provider or 'cascade'}, model {model or 'default'}"
        why = f"; the cache is unavailable ({problem})" if problem else ""
        super().__init__(
            f"replay: no recorded answer for {shown!r} ({target}){why}; to record it, run "
            f"`%llm cache on` (or set {ENV_VAR}=on) and run the cell once")

    @classmethod
    def for_request(cls, fields: RequestFields, *, problem: str | None = None) -> ReplayMiss:
        try:
            summary = fields.summary()
        except Exception:  # noqa: BLE001 - a miss must be shown whatever the request holds
            summary = "(this request)"
        return cls(summary, fields.provider, fields.model, problem=problem)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The ``cache:`` section of providers.yaml. ``path`` None: the user cache dir."""

    path: Path | None = None
    mode: CacheMode = "off"
    ttl_days: float | None = None
    max_mb: float = DEFAULT_MAX_MB

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CacheSettingError(f"cache mode must be off, on or replay, not {self.mode!r}")
        if self.ttl_days is not None and not _positive(self.ttl_days):
            raise CacheSettingError(
                f"cache ttl_days must be a positive number, not {self.ttl_days!r}")
        if not _positive(self.max_mb):
            raise CacheSettingError(f"cache max_mb must be a positive number, not "
                                    f"{self.max_mb!r}")

    def resolve_mode(self, env: Mapping[str, str] | None = None) -> CacheMode:
        """The mode in force: ``$TIMMY_CACHE_MODE`` (case and spaces ignored; empty is
        unset) over the configured one. An invalid value is a ``CacheSettingError``."""
        value = (os.environ if env is None else env).get(ENV_VAR, "").strip().lower()
        if not value:
            return self.mode
        if not _is_mode(value):
            raise CacheSettingError(
                f"{ENV_VAR}={value!r} is not a cache mode: use off, on or replay")
        return value

    def resolved_path(self) -> Path:
        return self.path if self.path is not None else default_path()


def _positive(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            and x > 0)


def _is_mode(value: str) -> TypeGuard[CacheMode]:
    return value in MODES


def cell_mode(mode: CacheMode, flag: bool | None) -> CacheMode:
    """The mode for one cell: ``--cache`` (True) turns an ``off`` cache on for it,
    ``--no-cache`` (False) turns it off (even in replay: the author asked for a live
    answer), None keeps ``mode``."""
    if flag is None:
        return mode
    if not flag:
        return "off"
    return "on" if mode == "off" else mode


def default_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("timmy-magic")) / FILE_NAME


# ---------------------------------------------------------------- the key


@dataclass(frozen=True, slots=True)
class RequestFields:
    """What decides an answer, and nothing else (no key, no header, no URL).
    ``provider`` None is the cascade; ``model`` is the resolved model when known."""

    messages: Sequence[Message | Mapping[str, Any]]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    provider: str | None = None
    schema: Mapping[str, Any] | str | None = None
    """A JSON schema, as a dict or as JSON text (parsed, so layout does not matter)."""
    format: str | None = None
    api_mode: str | None = None
    """``chat`` or ``completion``: the same prompt asked two ways answers differently."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Any other option that changes the answer (``stop``, ``top_p``, ``seed``...)."""

    @classmethod
    def of(cls, req: ChatRequest, **kw: Any) -> RequestFields:
        """From a ``types.ChatRequest`` as asked (no default applied); ``kw`` overrides or
        adds (``model=``, ``schema=``, ``format=``, ``api_mode=``, ``options=``). A cell
        keys with ``resolved``."""
        base = {"messages": req.messages, "model": req.model,
                "temperature": req.temperature, "max_tokens": req.max_tokens,
                "provider": req.provider,
                "schema": req.schema.canonical() if req.schema is not None else None}
        return cls(**{**base, **kw})

    @classmethod
    def resolved(cls, req: ChatRequest, config: Config, fmt: str | None) -> RequestFields:
        """The request as it is sent, every default applied: what the key must cover, so a
        changed providers.yaml misses instead of replaying an answer asked another way.
        Pinned (``req.provider``): the model, max_tokens, temperature, stop, params and
        API mode that provider is sent (``sent_settings``). Through the cascade: the
        request as asked, and what each enabled provider would be sent (any of them may
        answer)."""
        base = cls.of(req, format=fmt)
        if req.provider is not None:
            pinned = config.provider(req.provider)
            if pinned is None:  # the router names the unknown provider; key it as asked
                return base
            sent = sent_settings(req, pinned, config.cascade)
            return cls.of(req, model=sent.pop("model"), temperature=sent.pop("temperature"),
                          max_tokens=sent.pop("max_tokens"), api_mode=sent.pop("api_mode"),
                          format=fmt, options=sent)
        return cls.of(req, format=fmt, options={"cascade": [
            sent_settings(req, p, config.cascade) for p in config.providers if p.enabled]})

    def canonical(self) -> dict[str, Any]:
        return {
            "v": KEY_VERSION,
            "messages": [_canonical_message(m) for m in self.messages],
            "model": self.model,
            "temperature": None if self.temperature is None else float(self.temperature),
            "max_tokens": self.max_tokens,
            "provider": self.provider or "cascade",
            "schema": _canonical_schema(self.schema),
            "format": self.format,
            "api_mode": self.api_mode,
            "options": dict(self.options),
        }

    def summary(self) -> str:
        """The prompt (last user message), one line, at most ``SUMMARY_CHARS``."""
        return summarize(self.messages)


def sent_settings(req: ChatRequest, provider: ProviderConfig,
                  cascade: CascadeConfig) -> dict[str, Any]:
    """What ``provider`` is sent for ``req`` besides the messages and the schema: the
    defaults ``attempt.attempt`` applies (the request's max_tokens, else the model's, else
    ``cascade.default_max_tokens``; the request's temperature, else the model's) and the
    model's fields the adapter adds (``stop``, ``params``, chat or completion API), with the
    provider's name and type (an adapter builds its own body: Anthropic's, Ollama's)."""
    model = req.model or provider.default_model
    mc = provider.model(model)
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = (mc.max_tokens if mc is not None else None) or cascade.default_max_tokens
    temperature = req.temperature
    if temperature is None and mc is not None:
        temperature = mc.temperature
    return {"provider": provider.name, "type": provider.type, "model": model,
            "max_tokens": max_tokens,
            "temperature": None if temperature is None else float(temperature),
            "api_mode": mc.mode if mc is not None else "chat",
            "stop": list(mc.stop) if mc is not None else [],
            "params": dict(mc.params) if mc is not None else {}}


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, text as is (not \\u-escaped): equal values give equal
    text. A value JSON cannot hold (NaN, a set) is a ValueError or TypeError."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def request_key(fields: RequestFields) -> str:
    """SHA-256 (hex) of the canonical request."""
    try:
        text = canonical_json(fields.canonical())
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"request cannot be cached: {exc}") from None
    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_schema(schema: Mapping[str, Any] | str | None) -> Any:
    if isinstance(schema, str):
        return json.loads(schema)
    return schema


def _canonical_message(m: Message | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(m, Message):
        if isinstance(m.content, str):
            return {"role": m.role, "content": m.content}
        return {"role": m.role, "content": _canonical_content(openai_content(m))}
    return {"role": m.get("role"), "content": _canonical_content(m.get("content"))}


def _canonical_content(content: Any) -> Any:
    """A string stays; a list of parts that are all text is joined (as the adapters join
    them); otherwise each text part becomes ``{"type": "text", "text": ...}``."""
    if not isinstance(content, list):
        return content
    parts = [_canonical_part(p) for p in content]
    if all(p.get("type") == "text" and set(p) == {"type", "text"} for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _canonical_part(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, Mapping):
        d = dict(part)
        if "type" not in d and isinstance(d.get("text"), str):
            d["type"] = "text"
        return d
    return {"type": "unknown", "value": part}


def summarize(messages: Sequence[Message | Mapping[str, Any]]) -> str:
    """The user's last request, masked (``REDACT``), on one line of at most
    ``SUMMARY_CHARS``: without the notebook context a cell puts before it (``--cells``,
    ``--vars``, ``--error``), which begins every such message alike."""
    text = ""
    for m in messages:
        msg = _canonical_message(m)
        if msg["role"] == "user":
            content = msg["content"]
            text = content if isinstance(content, str) else " ".join(
                str(p.get("text", "")) if p.get("type") == "text" else f"[{p.get('type')}]"
                for p in content if isinstance(p, dict)) if isinstance(
                content, list) else canonical_json(content)
    if text.startswith(INTRO) and REQUEST_HEADING in text:
        text = text.rpartition(REQUEST_HEADING)[2]
    line = " ".join(REDACT(text).split())
    if len(line) > SUMMARY_CHARS:
        line = line[: SUMMARY_CHARS - 1] + "…"
    return line


# ---------------------------------------------------------------- the value


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

    @classmethod
    def from_result(cls, result: Result, fields: RequestFields, *,
                    now: float | None = None) -> CachedAnswer | None:
        """A complete answer as a cache value; None for a partial, failed or invalid one,
        and for one with no text (a usage chunk only, a reasoning model that only thought):
        replayed, it would answer ``''`` until the cache is cleared."""
        if not result.ok or not result.text.strip():
            return None
        return cls(text=result.text, provider=result.provider, model=result.model,
                   usage=result.usage, timings=result.timings,
                   created=_iso(time.time() if now is None else now),
                   summary=fields.summary())

    def note(self) -> str:
        """For the footer: ``cached · local-gemma · 2025-05-01``."""
        return f"cached · {self.provider or 'unknown provider'} · {self.created[:10]}"

    def to_result(self, trace: RouteTrace | None = None) -> Result:
        """A Result with the recorded text, usage and timings, and ``note()`` as a note."""
        return Result(text=self.text, provider=self.provider, model=self.model,
                      usage=self.usage, timings=self.timings, trace=trace or RouteTrace(),
                      notes=((f"answered from the cache: recorded {self.created[:16]} UTC "
                              f"from {self.provider or 'an unknown provider'}"),),
                      cached=True)

    def redacted(self) -> CachedAnswer:
        return CachedAnswer(
            text=REDACT(self.text), provider=_redact_opt(self.provider),
            model=_redact_opt(self.model), usage=self.usage, timings=self.timings,
            created=self.created, summary=REDACT(self.summary))

    def to_json(self) -> str:
        u, t = self.usage, self.timings
        return canonical_json({
            "text": self.text, "provider": self.provider, "model": self.model,
            "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                      "estimated": u.estimated},
            "timings": {"ttft_s": _finite(t.ttft_s), "total_s": _finite(t.total_s) or 0.0,
                        "output_tokens_per_s": _finite(t.output_tokens_per_s)},
            "created": self.created, "summary": self.summary})

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
            created=_str(d["created"]), summary=_str(d.get("summary", "")))


def _iso(epoch: float) -> str:
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


# ---------------------------------------------------------------- stats


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


# ---------------------------------------------------------------- the store


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


class _NotOurs(Exception):
    """The file at the path is not an answer cache of ours: it is never moved or written."""


P = ParamSpec("P")
T = TypeVar("T")


def _reason(exc: BaseException) -> str:
    """An exception as one short line: an OSError's own words (its path may be long), a
    SQLite error's message, else the type and the message."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, sqlite3.Error | _NotOurs):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= WARNING_CHARS else line[: WARNING_CHARS - 1] + "…"


def _boundary(what: str, then: str,
              fallback: Callable[..., Any]) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A public method of ``AnswerCache`` as the cache's boundary: any exception from
    inside (but a ``ReplayMiss``, which is an answer) is one warning line naming ``what``
    failed and ``then`` what happens instead, and ``fallback(cache, why, *args)`` is the
    result (a miss, nothing stored...). A cell never sees a cache failure."""

    def wrap(method: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(method)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(*args, **kwargs)
            except ReplayMiss:
                raise
            except Exception as exc:  # noqa: BLE001 - the cache must never break a cell
                cache = cast(AnswerCache, args[0])
                why = _reason(exc)
                log.warning("answer cache %s: %s failed (%s)%s", cache.path, what, why, then)
                return cast(T, fallback(cache, why, *args[1:], **kwargs))
        return guarded
    return wrap


def _missed(cache: AnswerCache, why: str, *args: Any, **kwargs: Any) -> None:
    with cache._lock:
        cache.misses += 1


def _lookup_failed(cache: AnswerCache, why: str, fields: RequestFields, mode: CacheMode,
                   *args: Any, **kwargs: Any) -> None:
    """In replay a failed lookup is a miss that says why (replay never asks live)."""
    if mode == "replay":
        raise ReplayMiss.for_request(fields, problem=why) from None


def _stats_failed(cache: AnswerCache, why: str, *args: Any, **kwargs: Any) -> CacheStats:
    return CacheStats(path=cache.path, available=cache.available, entries=0, bytes=0,
                      file_bytes=0, hits=cache.hits, misses=cache.misses, oldest=None,
                      newest=None, max_mb=cache.max_mb, ttl_days=cache.ttl_days,
                      problem=why, read_only=cache.read_only)


def _our_header(header: bytes) -> bool:
    """A SQLite database header holding our application id."""
    return (len(header) >= 100 and header.startswith(SQLITE_MAGIC)
            and int.from_bytes(header[68:72], "big") == APPLICATION_ID)


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV,
                  errno.EMLINK}


def _make_dirs(path: Path) -> None:
    """``path`` and its missing parents, each made 0700 (the cache holds prompts); one
    that exists is left as it is."""
    missing: list[Path] = []
    here = path
    while not here.is_dir() and not here.exists() and here.parent != here:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


class AnswerCache:
    """The SQLite store. Never raises: a failure is one warning and a miss."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 ttl_days: float | None = None, max_mb: float = DEFAULT_MAX_MB,
                 clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.ttl_days, self.max_mb = ttl_days, max_mb
        self.clock, self.busy_timeout_s = clock, busy_timeout_s
        self.hits = self.misses = 0
        self.problem: str | None = None
        self.read_only = False
        """Opened read-only (no write access): answers are served, none stored."""
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = self._open()

    @classmethod
    def from_settings(cls, settings: CacheSettings, *,
                      clock: Callable[[], float] = time.time) -> AnswerCache:
        return cls(settings.resolved_path(), ttl_days=settings.ttl_days,
                   max_mb=settings.max_mb, clock=clock)

    @property
    def available(self) -> bool:
        return self._conn is not None

    # ------------------------------------------------------------ opening

    def _open(self) -> sqlite3.Connection | None:
        """The connection, or None (one warning says why): never raises."""
        try:
            return self._open_ours()
        except _NotOurs as exc:
            why = f"{exc}; it is left as it is"
        except Exception as exc:  # noqa: BLE001 - a cache that cannot open is off
            why = _reason(exc)
        self._unavailable(why)
        return None

    def _open_ours(self) -> sqlite3.Connection | None:
        self.path = self.path.expanduser()  # "~nobody/...": RuntimeError, the cache is off
        kind = self._inspect()
        if kind == "absent":
            self._create_file()
        elif kind == "damaged":
            return self._recover("not a database", unless_ours_now=True)
        try:
            return self._connect_waiting()
        except sqlite3.OperationalError as exc:
            conn = self._read_only_fallback(_reason(exc))
            if conn is None:
                raise
            return conn
        except _NotOurs:
            raise
        except sqlite3.DatabaseError as exc:  # ours by its header, damaged inside
            return self._recover(_reason(exc))

    def _header(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(HEADER_BYTES)

    def _inspect(self) -> Literal["absent", "ours", "damaged"]:
        """Whose file is at the path: none (``absent``), ours by its header (``ours``), or
        one of ours that is damaged (``damaged``: not a database, in our own cache
        directory). Any other file is ``_NotOurs``: it is never moved or written."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISREG(st.st_mode):
            raise _NotOurs("it is a directory" if stat.S_ISDIR(st.st_mode)
                           else "it is not a regular file")
        header = self._header()
        if _our_header(header):
            return "ours"
        sqlite = header.startswith(SQLITE_MAGIC)
        if self._in_own_dir() and (not sqlite or self._damaged_or_empty()):
            return "damaged"
        if sqlite:
            raise _NotOurs("the file is another program's SQLite database")
        raise _NotOurs("the file is not an answer cache (not a SQLite database of ours)")

    def _damaged_or_empty(self) -> bool:
        """A file with a SQLite header that SQLite cannot read, or a database with no
        application id and nothing in it (a cache whose making was cut short by an older
        version). Read as it is on disk (``immutable``): nothing is written."""
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error:
            return False  # cannot even be opened: left alone
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.OperationalError:
            return False
        except sqlite3.DatabaseError:  # "file is not a database", "malformed"
            return True
        finally:
            conn.close()
        return bool(app_id == 0 and tables == 0)

    def _in_own_dir(self) -> bool:
        """The path is a SQLite-named file inside our own (the default) cache directory."""
        try:
            here = self.path.resolve()
            own = default_path().parent.resolve()
        except Exception:  # noqa: BLE001 - where our directory is, unknown: not ours
            return False
        return here.suffix.lower() in OWN_SUFFIXES and here.parent.is_relative_to(own)

    def _create_file(self) -> None:
        """A new cache, built whole in a temporary file beside the path (0600) and linked
        into place: another kernel sees no file or a complete one, and a file that
        appeared meanwhile (another kernel's) is never replaced."""
        _make_dirs(self.path.parent)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=".timmy-cache-",
                                    suffix=".tmp")
        os.close(fd)
        try:
            conn = sqlite3.connect(name, isolation_level=None)
            try:
                self._create(conn)
                conn.execute("PRAGMA journal_mode = WAL")  # kept in the header
            finally:
                conn.close()
            try:
                os.link(name, self.path)
            except FileExistsError:
                pass  # another kernel linked its own first: that one is used
            except OSError as exc:  # a file system without hard links
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                if not os.path.lexists(self.path):
                    os.replace(name, self.path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name + suffix)

    def _read_only_fallback(self, why: str) -> sqlite3.Connection | None:
        """A cache we may read but not write (a replay file in a read-only checkout):
        answers are served, none recorded."""
        if not os.path.isfile(self.path):
            return None
        try:
            conn = self._connect_read_only()
        except (sqlite3.Error, _NotOurs):
            return None
        self.read_only, self.problem = True, f"read-only: {why}"
        log.warning("answer cache %s is read-only (%s): recorded answers are served, new "
                    "ones are not stored", self.path, why)
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise _NotOurs("the file is another program's SQLite database")
        except BaseException:
            conn.close()
            raise
        return conn

    def _recover(self, why: str, *,
                 unless_ours_now: bool = False) -> sqlite3.Connection | None:
        """A damaged cache of ours: move it aside and start afresh. ``unless_ours_now``:
        another kernel may have done so a moment ago; its new cache is used, not moved."""
        try:
            if unless_ours_now and _our_header(self._header()):
                return self._connect_waiting()
            aside = self._move_aside()
            self._create_file()
            conn = self._connect_waiting()
        except _NotOurs:
            raise
        except Exception as again:  # noqa: BLE001 - reported as the reason it is off
            self._unavailable(f"damaged ({why}) and could not be replaced: "
                              f"{_reason(again)}")
            return None
        log.warning("answer cache %s was damaged (%s): moved aside to %s, a new cache "
                    "was started", self.path, why, aside.name)
        return conn

    def _move_aside(self) -> Path:
        """Rename the file (and its WAL) to ``<name>.corrupt-<stamp>``: only a file that is
        provably ours, checked again here (another kernel may have replaced it)."""
        if not self._in_own_dir() and not _our_header(self._header()):
            raise _NotOurs("the file is not an answer cache (not a SQLite database of ours)")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.rename(aside)
        for suffix in ("-wal", "-shm", "-journal"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        return aside

    def _unavailable(self, why: str) -> None:
        """Caching is off for this object: one warning says why."""
        self.problem = why
        log.warning("answer cache %s cannot be used (%s): caching is off for this session",
                    self.path, why)

    def _connect_waiting(self) -> sqlite3.Connection:
        """Connect, waiting out another kernel that is switching the file to WAL right
        now: SQLite reports "database is locked" for that at once, without calling the
        busy handler, so the busy timeout alone does not cover it."""
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.005
        while True:
            try:
                return self._connect()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _connect(self) -> sqlite3.Connection:
        """The file as it is (``mode=rw``: SQLite never creates one here; a new cache is
        made by ``_create_file`` only)."""
        uri = self.path.resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s,
                               isolation_level=None, check_same_thread=False)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("BEGIN")  # one snapshot
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        if app_id != APPLICATION_ID:
            raise _NotOurs("the file is another program's SQLite database")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not tables:
            self._create(conn)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ guarded access

    @contextmanager
    def _db(self, what: str) -> Iterator[sqlite3.Connection | None]:
        """The connection under the lock; a SQLite error inside is logged, and the block
        ends (the caller sees its default). None when the cache is unavailable. Any other
        exception rolls back too (no transaction is left holding the file's lock), then
        reaches the method's ``_boundary``."""
        with self._lock:
            if self._conn is None:
                yield None
                return
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._rollback()
                log.warning("answer cache %s: %s failed (%s)", self.path, what, _reason(exc))
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction, its lock taken up front (``BEGIN IMMEDIATE``)."""
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")

    # ------------------------------------------------------------ the API

    @_boundary("reading", ": a miss", _missed)
    def get(self, key: str, *, ignore_ttl: bool = False) -> CachedAnswer | None:
        """The recorded answer, or None (missing, expired, unreadable, empty, or any
        error)."""
        answer = None
        with self._db("reading") as conn:
            if conn is not None:
                answer = self._get(conn, key, ignore_ttl)
        with self._lock:
            if answer is None:
                self.misses += 1
            else:
                self.hits += 1
        return answer

    def _get(self, conn: sqlite3.Connection, key: str, ignore_ttl: bool) -> CachedAnswer | None:
        row = conn.execute("SELECT value, created, last_used FROM answers WHERE key = ?",
                           (key,)).fetchone()
        if row is None:
            return None
        value, created, last_used = cast(tuple[str, float, float], row)
        now = self.clock()
        if not ignore_ttl and self._expired(created, now):
            return None
        try:
            answer = CachedAnswer.from_json(value)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("answer cache %s: an unreadable entry was dropped (%s)", self.path,
                        _reason(exc))
            self._delete(conn, key)
            return None
        if not answer.text.strip():  # never recorded now; a file may still hold one
            log.warning("answer cache %s: an entry with no text was dropped", self.path)
            self._delete(conn, key)
            return None
        if now - last_used >= TOUCH_EVERY_S and not self.read_only:
            self._touch(conn, key, now)
        return answer

    def _expired(self, created: float, now: float) -> bool:
        return self.ttl_days is not None and now - created > self.ttl_days * 86400.0

    def _touch(self, conn: sqlite3.Connection, key: str, now: float) -> None:
        """Refresh last-used; a failure here (locked) loses only LRU precision."""
        try:
            conn.execute("UPDATE answers SET last_used = ? WHERE key = ?", (now, key))
        except sqlite3.Error as exc:
            log.debug("answer cache: last-used not updated (%s)", exc)

    def _delete(self, conn: sqlite3.Connection, key: str) -> None:
        if not self.read_only:
            conn.execute("DELETE FROM answers WHERE key = ?", (key,))

    @_boundary("writing", ": the answer is not stored", lambda *_a, **_k: False)
    def put(self, key: str, answer: CachedAnswer) -> bool:
        """Record ``answer`` (redacted) under ``key``; evict past ``max_mb``. False when
        nothing was stored (cache unavailable or read-only, an error, an answer larger than
        the cap)."""
        value = answer.redacted().to_json()
        size = len(key.encode()) + len(value.encode("utf-8", "surrogatepass"))
        if size > self._cap_bytes():
            log.warning("answer cache: an answer of %d bytes is larger than max_mb; not "
                        "cached", size)
            return False
        stored = False
        with self._db("writing") as conn:
            if conn is not None and not self.read_only:
                self._put(conn, key, value, size)
                stored = True
        return stored

    def _put(self, conn: sqlite3.Connection, key: str, value: str, size: int) -> None:
        now = self.clock()
        with self._write(conn):
            conn.execute("INSERT OR REPLACE INTO answers (key, value, created, last_used, "
                         "size) VALUES (?, ?, ?, ?, ?)", (key, value, now, now, size))
            evicted = self._evict(conn)
        if evicted:
            conn.execute("PRAGMA incremental_vacuum")

    def _cap_bytes(self) -> int:
        return int(self.max_mb * 1e6)

    def _evict(self, conn: sqlite3.Connection) -> int:
        """Least recently used first, down to ``EVICT_TO`` of the cap. Inside the put's
        transaction, so two kernels never evict past each other."""
        total = conn.execute("SELECT coalesce(sum(size), 0) FROM answers").fetchone()[0]
        if total <= self._cap_bytes():
            return 0
        target = total - int(self._cap_bytes() * EVICT_TO)
        doomed: list[str] = []
        freed = 0
        for key, size in conn.execute("SELECT key, size FROM answers ORDER BY last_used, "
                                      "created").fetchall():
            if freed >= target:
                break
            doomed.append(key)
            freed += size
        conn.executemany("DELETE FROM answers WHERE key = ?", [(k,) for k in doomed])
        return len(doomed)

    @_boundary("clearing", "", lambda *_a, **_k: 0)
    def clear(self) -> int:
        """Delete every entry; returns how many there were (0 on any error)."""
        count = 0
        with self._db("clearing") as conn:
            if conn is not None and not self.read_only:
                with self._write(conn):
                    count = conn.execute("DELETE FROM answers").rowcount
                conn.execute("PRAGMA incremental_vacuum")
        return max(count, 0)

    @_boundary("reading stats", "", _stats_failed)
    def stats(self) -> CacheStats:
        entries = size = 0
        oldest = newest = None
        with self._db("reading stats") as conn:
            if conn is not None:
                row = conn.execute("SELECT count(*), coalesce(sum(size), 0), min(created), "
                                   "max(created) FROM answers").fetchone()
                entries, size = row[0], row[1]
                oldest, newest = (None if row[2] is None else _iso(row[2]),
                                  None if row[3] is None else _iso(row[3]))
        return CacheStats(path=self.path, available=self.available, entries=entries,
                          bytes=size, file_bytes=self._file_bytes(), hits=self.hits,
                          misses=self.misses, oldest=oldest, newest=newest,
                          max_mb=self.max_mb, ttl_days=self.ttl_days, problem=self.problem,
                          read_only=self.read_only)

    def _file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += self.path.with_name(self.path.name + suffix).stat().st_size
            except (OSError, ValueError):  # none, or a path no file can have
                pass
        return total

    # ------------------------------------------------------------ modes

    @_boundary("lookup", ": the answer is asked live (in replay: a replay miss)",
               _lookup_failed)
    def lookup(self, fields: RequestFields, mode: CacheMode) -> CachedAnswer | None:
        """What a cell asks before routing: ``off`` None (not touched), ``on`` the hit or
        None, ``replay`` the hit (TTL ignored) or ``ReplayMiss``. Any failure is one
        warning and a miss (a ``ReplayMiss`` in replay)."""
        if mode == "off":
            return None
        answer = self.get(request_key(fields), ignore_ttl=mode == "replay")
        if answer is None and mode == "replay":
            raise ReplayMiss.for_request(fields, problem=None if self.available
                                         else self.problem)
        return answer

    @_boundary("recording", ": the answer is not stored", lambda *_a, **_k: False)
    def record(self, fields: RequestFields, result: Result, mode: CacheMode) -> bool:
        """What a cell does after a live answer: stored only in ``on`` mode and only when
        complete and not empty. True when stored."""
        if mode != "on":
            return False
        answer = CachedAnswer.from_result(result, fields, now=self.clock())
        return answer is not None and self.put(request_key(fields), answer)

    @_boundary("closing", "", lambda *_a, **_k: None)
    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    log.debug("answer cache: close failed (%s)", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
