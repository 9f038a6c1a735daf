"""The answer cache as requests use it: one per ``Router``.

It holds the store in use (opened on first use, opened again when the path in force
changes) and keys a ``ChatRequest`` as it is sent, with the provider and model settings
of providers.yaml applied (``RequestFields.resolved``). Two kinds of caller go through
the same ``fields``, ``lookup`` and ``record``:

- the router: ``complete``, ``acomplete``, ``stream`` and ``astream`` answer through
  ``answer``, ``aanswer``, ``events`` and ``aevents``, in the mode of a Python call
  (``mode``: ``cache:`` in providers.yaml, then the call's ``cache=``);
- a notebook cell (and ``map``): it resolves the mode of a cell and keys with its output
  format (``notebook/cached.py``), looks up here, and asks the router with
  ``cache=False`` so nothing is looked up or recorded twice.

A hit is the recorded answer as a ``Result`` marked ``cached`` (with a schema, its data
validated again); in replay a miss is a ``ReplayMiss`` and nothing is sent. SQLite stays
off the router's loop: the async paths look up and record in a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from timmy_magic.cache.answers import ReplayMiss
from timmy_magic.cache.keys import RequestFields
from timmy_magic.cache.settings import CacheMode, cell_mode, configured_path
from timmy_magic.model.chat import ChatRequest, Delta, Done, Event, Result
from timmy_magic.model.schema import InvalidAnswer, Schema

if TYPE_CHECKING:
    from timmy_magic.cache.store import AnswerCache
    from timmy_magic.config import Config

T = TypeVar("T")


class RequestCache:
    """Lookup and record for the requests of one router (see the module's doc)."""

    def __init__(self, config: Callable[[], Config], *,
                 env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        """The router's configuration now (a reload replaces it)."""
        self._env = env
        self._clock = clock
        self._store: AnswerCache | None = None
        self._lock = threading.Lock()

    def mode(self, flag: bool | None = None) -> CacheMode:
        """The mode of a Python call: ``cache.mode`` in providers.yaml, with ``flag`` (the
        call's ``cache=``) applied as ``--cache`` / ``--no-cache`` are to a cell."""
        if flag is False:  # nothing to read: the caller looked up itself, or wants it live
            return "off"
        return cell_mode(self._config().cache.mode, flag)

    def store(self) -> AnswerCache:
        """The store at the path in force (``configured_path``): opened on first use, so
        building a router stays fast, and opened again when the path changes."""
        settings = self._config().cache
        path = configured_path(settings, self._env)
        with self._lock:
            if self._store is None or self._store.path != path:
                from timmy_magic.cache.store import AnswerCache

                self._close()
                self._store = AnswerCache(path, ttl_days=settings.ttl_days,
                                          max_mb=settings.max_mb, clock=self._clock)
            return self._store

    # ------------------------------------------------------------ one request

    def fields(self, req: ChatRequest, mode: CacheMode,
               fmt: str | None = None) -> RequestFields | None:
        """``req`` as the cache keys it, every default applied (``RequestFields.resolved``:
        the model's max_tokens, temperature, stop, params and mode from providers.yaml,
        ``cascade.default_max_tokens``), so a changed providers.yaml misses instead of
        replaying an answer asked another way. ``fmt``: a cell's output format. None when
        ``mode`` is off."""
        if mode == "off":
            return None
        return RequestFields.resolved(req, self._config(), fmt)

    def lookup(self, fields: RequestFields | None, mode: CacheMode,
               schema: Schema | None = None) -> Result | None:
        """The recorded answer as a Result, or None (ask live). ReplayMiss in replay.
        With ``schema``, its data is validated again (a recorded answer is text; one the
        schema no longer takes is a miss)."""
        if fields is None:
            return None
        hit = self.store().lookup(fields, mode)
        if hit is None:
            return None
        result = hit.to_result()
        if schema is None:
            return result
        try:
            return replace(result, data=schema.validate(result.text))
        except InvalidAnswer:
            if mode == "replay":
                raise ReplayMiss.for_request(fields, problem="the recorded answer does not "
                                             "match the schema now") from None
            return None

    def record(self, fields: RequestFields | None, result: Result, mode: CacheMode) -> bool:
        """Store a live answer: only in ``on`` mode, only a complete one. True if stored."""
        if fields is None or mode != "on":
            return False
        return self.store().record(fields, result, mode)

    def _lookup_call(self, fields: RequestFields | None, mode: CacheMode,
                     schema: Schema | None) -> Result | None:
        """``lookup`` for a Python call: a replay miss says how to record from Python."""
        try:
            return self.lookup(fields, mode, schema)
        except ReplayMiss as miss:
            raise miss.from_python() from None

    # ------------------------------------------------------------ the router's calls

    def answer(self, req: ChatRequest, flag: bool | None,
               live: Callable[[], Result]) -> Result:
        """The recorded answer, else ``live()`` (recorded when complete, in ``on``)."""
        mode = self.mode(flag)
        fields = self.fields(req, mode)
        hit = self._lookup_call(fields, mode, req.schema)
        if hit is not None:
            return hit
        result = live()
        self.record(fields, result, mode)
        return result

    async def aanswer(self, req: ChatRequest, flag: bool | None,
                      live: Callable[[], Awaitable[Result]]) -> Result:
        """``answer`` for a coroutine, the store used from a worker thread."""
        mode = self.mode(flag)
        fields = self.fields(req, mode)
        if fields is None:
            return await live()
        hit = await asyncio.to_thread(self._lookup_call, fields, mode, req.schema)
        if hit is not None:
            return hit
        result = await live()
        await asyncio.to_thread(self.record, fields, result, mode)
        return result

    def events(self, req: ChatRequest, flag: bool | None,
               live: Callable[[], Iterator[T]]) -> Iterator[T | Event]:
        """A hit as its events (the text in one ``Delta``, then ``Done``), else the live
        stream, its answer recorded when its ``Done`` passes. Looked up now: a replay
        miss is raised here, before anything is iterated."""
        mode = self.mode(flag)
        fields = self.fields(req, mode)
        if fields is None:
            return live()
        hit = self._lookup_call(fields, mode, req.schema)
        if hit is not None:
            return iter((Delta(hit.text), Done(hit)))
        return _Recording(live(), lambda result: self.record(fields, result, mode))

    def aevents(self, req: ChatRequest, flag: bool | None,
                live: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T | Event]:
        """``events`` for async code (the lookup on first iteration, in a worker thread)."""
        mode = self.mode(flag)
        fields = self.fields(req, mode)
        if fields is None:
            return live()
        return self._aevents(fields, mode, req.schema, live)

    async def _aevents(self, fields: RequestFields, mode: CacheMode, schema: Schema | None,
                       live: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T | Event]:
        hit = await asyncio.to_thread(self._lookup_call, fields, mode, schema)
        if hit is not None:
            yield Delta(hit.text)
            yield Done(hit)
            return
        events = live()
        try:
            async for ev in events:
                if isinstance(ev, Done):
                    await asyncio.to_thread(self.record, fields, ev.result, mode)
                yield ev
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class _Recording(Generic[T]):
    """A live stream that records its answer as its ``Done`` passes; ``close`` closes
    the stream (a stream closed early records nothing)."""

    def __init__(self, events: Iterator[T], keep: Callable[[Result], object]) -> None:
        self._events = events
        self._keep = keep

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        ev = next(self._events)
        if isinstance(ev, Done):
            self._keep(ev.result)
        return ev

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
