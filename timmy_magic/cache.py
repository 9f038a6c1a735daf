"""The answer cache: the same request answered again from disk, instantly and offline.

Three modes (``CacheSettings.mode``, overridden by ``$TIMMY_CACHE_MODE``):

- ``off``: the cache is not touched;
- ``on``: a hit is answered from the cache, a miss goes to the providers and a complete
  answer is recorded;
- ``replay``: answers come only from the cache (no provider is ever contacted); a miss is a
  ``ReplayMiss`` naming what was asked and how to record it. TTL does not apply: a replay
  file recorded months ago for a tutorial must still replay.

**The key** (``request_key``) is the SHA-256 of the canonical JSON (sorted keys, no
whitespace, UTF-8) of what decides the answer: the messages (role and content; OpenAI
content parts made of text only are joined, as the adapters join them), the resolved model,
temperature, max_tokens, the JSON schema, the provider or ``"cascade"``, the output format
and the API mode (chat or completion), and any other sampling option. Never an API key or
a header: ``RequestFields`` has no place for one.

**The value** is the answer's text, usage, model, provider, timings, the UTC date it was
recorded and a summary of the prompt (its first 200 characters, for ``stats`` and replay
misses). Text, summary and names pass ``secrets.REDACT`` on the way in: the cache is a file
that lives for months and may be committed next to a notebook, so a key the model (or the
prompt) echoes must not reach it. The price is that a replayed answer shows ``sk-...1234``
where the live one showed the key, as errors and logs already do.

**Why SQLite in WAL mode.** Two kernels may use one cache file at once. SQLite (standard
library) gives atomic writes and cross-process locking without a server; WAL lets readers
go on while one writer commits, and a busy timeout makes a writer wait for another instead
of failing. Writes take the lock up front (``BEGIN IMMEDIATE``) so a transaction never has
to upgrade a read lock, the one case where SQLite reports "database is locked" at once
without waiting. One connection per ``AnswerCache``, guarded by a lock, serves every thread.

**Never breaks a cell.** A file that is not a SQLite database (or is damaged) is moved
aside as ``<name>.corrupt-<timestamp>`` with one warning, and a fresh cache is made. A
cache that cannot be opened at all (read-only directory, a directory at the path) is
``available == False``: every lookup is a miss, nothing is stored, one warning says why.
Every later SQLite error (locked past the timeout, disk full) is a warning and a miss.
A SQLite file that is some other program's database is left alone (cache off). A cache
file we may read but not write (a replay file in a read-only checkout) is opened read-only:
answers are served, none recorded.

**Size.** ``max_mb`` caps the stored entries (key and value bytes); past it the least
recently used entries are evicted down to 90% of the cap. A hit refreshes the entry's
last-used time (at most once a minute, so reads rarely write).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal, Self, TypeGuard, cast

from .errors import InvalidRequest, TimmyError
from .providers.parts import openai_content
from .secrets import REDACT, get_logger
from .types import ChatRequest, Message, Result, RouteTrace, Timings, Usage

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
KEY_VERSION = 1
"""Part of every key: a change to what the key covers changes this, and old entries miss."""
APPLICATION_ID = 0x544D4331  # "TMC1", in the database header: this file is ours
SCHEMA_VERSION = 1

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
        return cls(fields.summary(), fields.provider, fields.model, problem=problem)


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
        """From a ``types.ChatRequest``; ``kw`` overrides or adds (``model=`` the resolved
        model, ``schema=``, ``format=``, ``api_mode=``, ``options=``)."""
        base = {"messages": req.messages, "model": req.model,
                "temperature": req.temperature, "max_tokens": req.max_tokens,
                "provider": req.provider,
                "schema": req.schema.canonical() if req.schema is not None else None}
        return cls(**{**base, **kw})

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
    text = ""
    for m in messages:
        msg = _canonical_message(m)
        if msg["role"] == "user":
            content = msg["content"]
            text = content if isinstance(content, str) else " ".join(
                str(p.get("text", "")) if p.get("type") == "text" else f"[{p.get('type')}]"
                for p in content if isinstance(p, dict)) if isinstance(
                content, list) else canonical_json(content)
    line = " ".join(text.split())
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
        """A complete answer as a cache value; None for a partial or failed one."""
        if not result.ok:
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
                      notes=(f"answered from the cache: recorded {self.created[:16]} UTC "
                             f"from {self.provider or 'an unknown provider'}",),
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
    """The file is a SQLite database of some other program."""


class AnswerCache:
    """The SQLite store. Never raises a SQLite error: a failure is a warning and a miss."""

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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect_waiting()
        except _NotOurs:
            why = "the file is another program's SQLite database"
        except sqlite3.OperationalError as exc:
            why = str(exc)
            conn = self._read_only_fallback(why)
            if conn is not None:
                return conn
        except sqlite3.DatabaseError as exc:
            return self._recover(exc)
        except OSError as exc:
            why = exc.strerror or str(exc)
        self._unavailable(why)
        return None

    def _read_only_fallback(self, why: str) -> sqlite3.Connection | None:
        """A cache we may read but not write (a replay file in a read-only checkout):
        answers are served, none recorded."""
        if not self.path.is_file():
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
                raise _NotOurs()
        except BaseException:
            conn.close()
            raise
        return conn

    def _recover(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection | None:
        """The file is damaged or not SQLite: move it aside and start afresh."""
        try:
            aside = self._move_aside()
            conn = self._connect()
        except (sqlite3.Error, OSError, _NotOurs) as again:
            self._unavailable(f"damaged ({exc}) and could not be replaced: {again}")
            return None
        log.warning("answer cache %s was damaged (%s): moved aside to %s, a new cache "
                    "was started", self.path, exc, aside.name)
        return conn

    def _move_aside(self) -> Path:
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
        """Connect, waiting out another kernel that is creating the file or switching it
        to WAL right now: SQLite reports "database is locked" for those at once, without
        calling the busy handler, so the busy timeout alone does not cover them."""
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
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("BEGIN")  # one snapshot: another kernel may be creating it right now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        if tables and app_id != APPLICATION_ID:
            raise _NotOurs()
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
        ends (the caller sees its default). None when the cache is unavailable."""
        with self._lock:
            if self._conn is None:
                yield None
                return
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._rollback()
                log.warning("answer cache %s: %s failed (%s)", self.path, what, exc)

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

    def get(self, key: str, *, ignore_ttl: bool = False) -> CachedAnswer | None:
        """The recorded answer, or None (missing, expired, unreadable, or any error)."""
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
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("answer cache %s: an unreadable entry was dropped (%s)", self.path, exc)
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

    def clear(self) -> int:
        """Delete every entry; returns how many there were (0 on any error)."""
        count = 0
        with self._db("clearing") as conn:
            if conn is not None and not self.read_only:
                with self._write(conn):
                    count = conn.execute("DELETE FROM answers").rowcount
                conn.execute("PRAGMA incremental_vacuum")
        return max(count, 0)

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
            except OSError:
                pass
        return total

    # ------------------------------------------------------------ modes

    def lookup(self, fields: RequestFields, mode: CacheMode) -> CachedAnswer | None:
        """What a cell asks before routing: ``off`` None (not touched), ``on`` the hit or
        None, ``replay`` the hit (TTL ignored) or ``ReplayMiss``."""
        if mode == "off":
            return None
        answer = self.get(request_key(fields), ignore_ttl=mode == "replay")
        if answer is None and mode == "replay":
            raise ReplayMiss.for_request(fields, problem=None if self.available
                                         else self.problem)
        return answer

    def record(self, fields: RequestFields, result: Result, mode: CacheMode) -> bool:
        """What a cell does after a live answer: stored only in ``on`` mode and only when
        complete. True when stored."""
        if mode != "on":
            return False
        answer = CachedAnswer.from_result(result, fields, now=self.clock())
        return answer is not None and self.put(request_key(fields), answer)

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
