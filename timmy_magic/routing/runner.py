"""One background asyncio loop thread that owns the router's I/O.

ipykernel already runs a loop of its own, so the magics stay synchronous and hand coroutines
to this one. ``iterate`` bridges an async iterator to a plain generator; when the consumer
stops early (KeyboardInterrupt from a kernel interrupt, ``break``, an exception), the
producing task is cancelled, which closes the HTTP stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class Runner:
    def __init__(self, name: str = "timmy-magic-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait; on KeyboardInterrupt or timeout, cancel it."""
        if self.on_loop():
            raise RuntimeError("Runner.run called from the runner's own loop (would deadlock)")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def call(self, coro: Coroutine[Any, Any, T], what: str = "call") -> T:
        """Run ``coro`` on the loop and wait for its result, from another thread. Cheaper
        than ``run`` (a bare lock and one ``call_soon_threadsafe``:
        ``run_coroutine_threadsafe``'s future chaining cost a third of the hop, 0.08 of
        0.22 ms CPU). The wait is in short steps so a kernel interrupt lands; it then
        cancels the task and waits (up to 5 s) for its clean-up (permits, metrics,
        connections), so the caller sees them settled."""
        if self.on_loop():
            raise RuntimeError(f"{what} called on the router's own loop (would deadlock): "
                               "await its async form instead")
        settled = threading.Lock()
        settled.acquire()
        box: list[Any] = []
        task: list[asyncio.Task[None]] = []

        async def body() -> None:
            try:
                box.append(await coro)
            except BaseException as exc:  # handed to the caller, re-raised there
                box.append(_Raised(exc))
                if not isinstance(exc, Exception):
                    raise

        def start() -> None:  # on the loop
            task.append(loop.create_task(body()))
            task[0].add_done_callback(lambda _: settled.release())  # even if never run

        loop = self.loop
        loop.call_soon_threadsafe(start)
        try:
            while not settled.acquire(timeout=0.25):
                pass
        except BaseException:
            loop.call_soon_threadsafe(lambda: task and task[0].cancel())
            settled.acquire(timeout=5)
            raise
        out = box[0]
        if isinstance(out, _Raised):
            raise out.exc
        return out  # type: ignore[no-any-return]

    def iterate(self, make: Callable[[], AsyncIterator[T]],
                poll: float = 0.05) -> Iterator[T]:
        """Consume ``make()`` on the loop from this (other) thread, item by item."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        finished = threading.Event()
        started: list[asyncio.Task[Any] | None] = []

        async def pump() -> None:
            started.append(asyncio.current_task())
            try:
                async for item in make():
                    q.put(item)
            except BaseException as exc:  # forwarded to the consumer, re-raised there
                q.put(_Raised(exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                q.put(_END)
            finally:
                finished.set()

        fut = self.submit(pump())
        try:
            while True:
                item = _get(q, poll)
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            if not fut.done():
                fut.cancel()
                if started:  # it ran: wait for its clean-up (permits, metrics,
                    finished.wait(5)  # connections), so the caller sees them settled

    async def aiterate(self, make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Consume ``make()`` on this loop from a coroutine running on another loop."""
        if asyncio.get_running_loop() is self.loop:
            async for item in make():
                yield item
            return
        here = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in make():
                    here.call_soon_threadsafe(q.put_nowait, item)
            except BaseException as exc:
                here.call_soon_threadsafe(q.put_nowait, _Raised(exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                here.call_soon_threadsafe(q.put_nowait, _END)

        fut = self.submit(pump())
        try:
            while True:
                item = await q.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            fut.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                self.submit(_cancel_all()).result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def _get(q: queue.SimpleQueue[Any], poll: float) -> Any:
    """Wait for the next item. A plain function, not inline in ``iterate``: on CPython
    3.11 a KeyboardInterrupt raised at a loop jump inside a generator can skip the
    generator's ``finally`` (so the stream would never be cancelled); raised in here, it
    reaches the generator at a call, where its ``finally`` does run."""
    while True:
        try:
            return q.get(timeout=poll)
        except queue.Empty:
            pass


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


# ---------------------------------------------------------------- ticks


@dataclass(frozen=True, slots=True)
class Tick:
    """No event for a while: a chance to flush text a live display held back."""


TICK = Tick()


# ---------------------------------------------------------------- the sync bridge


def bridge(runner: Runner, events: AsyncGenerator[T, None],
           tick_every: float | None, poll: float = 0.05) -> Iterator[T | Tick]:
    """``events`` (run on the loop) as a plain generator for this thread.

    Events travel in batches: the loop side hands over what it has once the stream
    waits for the network (a ``call_soon`` flush), so a burst of events read at once
    wakes this thread once, not once per event (each wake-up is a GIL hand-over between
    two busy threads: docs/performance.md). Ticks come from this side: a wait longer
    than ``tick_every`` yields a ``Tick`` (a live display's chance to redraw), with no
    task or timer on the loop. Closing this generator early (``break``, an exception, a
    kernel interrupt) cancels the stream and waits for its clean-up (permits, metrics,
    connections), so the caller sees them settled."""
    loop = runner.loop
    q: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
    batch: list[Any] = []
    flushing = False
    settled = threading.Event()
    task: list[asyncio.Task[None]] = []

    def flush() -> None:
        nonlocal batch, flushing
        flushing = False
        if batch:
            q.put(batch)
            batch = []

    async def pump() -> None:
        nonlocal flushing
        try:
            async with aclosing(events) as evs:
                async for ev in evs:
                    batch.append(ev)
                    if not flushing:
                        flushing = True
                        loop.call_soon(flush)
        except BaseException as exc:  # re-raised to the consumer
            batch.append(_Raised(exc))
            flush()
            if not isinstance(exc, Exception):
                raise
        else:
            batch.append(_END)
            flush()

    def start() -> None:  # on the loop
        task.append(loop.create_task(pump()))
        task[0].add_done_callback(lambda _: settled.set())  # even if it never ran

    loop.call_soon_threadsafe(start)
    wait = poll if tick_every is None else tick_every
    over = False  # the stream ended or raised: it was closed before it said so
    try:
        while True:
            got = _next_batch(q, wait)
            if got is None:
                if tick_every is not None:
                    yield TICK
                continue
            for item in got:
                if item is _END:
                    over = True
                    return
                if isinstance(item, _Raised):
                    over = True
                    raise item.exc
                yield item
    finally:
        if not over and not settled.is_set():
            loop.call_soon_threadsafe(lambda: task and task[0].cancel())
            settled.wait(5)


def _next_batch(q: queue.SimpleQueue[list[Any]], timeout: float) -> list[Any] | None:
    """The next batch, or None after ``timeout``. A plain function, not inline in the
    generator: on CPython 3.11 a KeyboardInterrupt raised at a loop jump inside a
    generator can skip its ``finally`` (runner.py's ``_get`` says the same)."""
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None
