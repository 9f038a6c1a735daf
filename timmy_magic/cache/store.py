"""The answer store: one SQLite file of recorded answers, shared by every kernel.

Writes take the lock up front (``BEGIN IMMEDIATE``) so a transaction never has to upgrade
a read lock, the one case where SQLite reports "database is locked" at once without
waiting. One connection per ``AnswerCache``, guarded by a lock, serves every thread.
Opening the file (whose it is, recovery, read-only) is ``files.CacheFile``'s.

**Never breaks a cell.** Every public method is one boundary (``_boundary``): whatever
goes wrong inside (a SQLite error, an ``OSError`` of a name too long, a ``RecursionError``
from an entry nested past the limit) is one warning line and a miss, and the answer is
asked live (in replay, a ``ReplayMiss`` naming the problem: replay never goes live). A
cache that cannot be opened at all is ``available == False``: every lookup is a miss,
nothing is stored, one warning says why.

**Modes** (``lookup``, ``record``): ``off``, the cache is not touched; ``on``, a hit is
answered from the cache, a miss goes to the providers and a complete answer is
recorded; ``replay``, answers come only from the cache (no provider is ever contacted)
and a miss is a ``ReplayMiss`` naming what was asked and how to record it. TTL does not
apply in replay: a replay file recorded months ago for a tutorial must still replay.

**Size.** ``max_mb`` caps the stored entries (key and value bytes); past it the least
recently used entries are evicted down to 90% of the cap. A hit refreshes the entry's
last-used time (at most once a minute, so reads rarely write).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, cast

from timmy_magic.cache.answers import CachedAnswer, CacheStats, ReplayMiss, iso
from timmy_magic.cache.files import BUSY_TIMEOUT_S, CacheFile, reason
from timmy_magic.cache.keys import RequestFields, request_key
from timmy_magic.cache.settings import DEFAULT_MAX_MB, CacheMode, configured_path, default_path
from timmy_magic.model.chat import Result
from timmy_magic.privacy.redact import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from timmy_magic.config import CacheConfig

log = get_logger("timmy_magic.cache")

TOUCH_EVERY_S = 60.0
"""A hit rewrites the entry's last-used time only when it is older than this."""
EVICT_TO = 0.9
"""Eviction goes down to this fraction of the cap, so the next put does not evict again."""

P = ParamSpec("P")
T = TypeVar("T")


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
                why = reason(exc)
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


class AnswerCache:
    """The SQLite store. Never raises: a failure is one warning and a miss."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 ttl_days: float | None = None, max_mb: float = DEFAULT_MAX_MB,
                 clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.ttl_days, self.max_mb = ttl_days, max_mb
        self.clock, self.busy_timeout_s = clock, busy_timeout_s
        self.hits = self.misses = 0
        self._lock = threading.RLock()
        opened = CacheFile(Path(path) if path is not None else default_path(),
                           busy_timeout_s)
        self._conn: sqlite3.Connection | None = opened.open()
        self.path = opened.path
        self.problem: str | None = opened.problem
        self.read_only = opened.read_only
        """Opened read-only (no write access): answers are served, none stored."""

    @classmethod
    def from_settings(cls, settings: CacheConfig, *, env: Mapping[str, str] | None = None,
                      clock: Callable[[], float] = time.time) -> AnswerCache:
        """The store ``settings`` describe, at ``configured_path`` (``$TIMMY_CACHE_PATH``
        over ``settings.path``)."""
        return cls(configured_path(settings, env), ttl_days=settings.ttl_days,
                   max_mb=settings.max_mb, clock=clock)

    @property
    def available(self) -> bool:
        return self._conn is not None

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
                log.warning("answer cache %s: %s failed (%s)", self.path, what, reason(exc))
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
                        reason(exc))
            self._delete(conn, key)
            return None
        if not answer.text.strip() and not answer.calls:  # never recorded now (but a tool turn)
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
                oldest, newest = (None if row[2] is None else iso(row[2]),
                                  None if row[3] is None else iso(row[3]))
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
