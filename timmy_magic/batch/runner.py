"""Running a map: every row's request through the cascade, at most ``concurrency`` at once.

The requests run on the router's loop thread, so failover, breakers, the budget and the
cloud gate apply to every row, and the cascade spreads them over replicas (least
outstanding first). A failed row is kept as an error and never stops the others. The
calling thread waits in short steps (so an interrupt lands), draws the progress, and
reads and writes the answer cache (SQLite stays off the loop). Ctrl-C cancels what is in
flight and returns the finished rows (``MapResult.interrupted``).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from timmy_magic.batch.rows import MapJob, MapResult, failed
from timmy_magic.jobs import Job
from timmy_magic.model.chat import ChatRequest, Result
from timmy_magic.model.errors import InvalidRequest, RoutingError, TimmyError
from timmy_magic.model.template import InterpolationError
from timmy_magic.text.markup import count

if TYPE_CHECKING:
    from timmy_magic.model.progress import Progress
    from timmy_magic.routing.router import Router

PROGRESS_EVERY = 0.25
"""Seconds between two progress redraws."""
NOT_RUN = "interrupted before it was answered"
CLEANUP_S = 5.0
"""Longest wait, after an interrupt, for the cancelled requests to settle."""


class RowCache(Protocol):
    """The answer cache as a map uses it, its mode already chosen by the caller.
    ``lookup``: the recorded answer, or None to ask live; a TimmyError (a replay miss)
    makes that row an error that sends nothing. ``record``: keep a live answer."""

    def lookup(self, req: ChatRequest) -> Result | None: ...

    def record(self, req: ChatRequest, result: Result) -> None: ...


@dataclass
class _Plan:
    """The requests to send (index -> request) and the rows already settled."""

    requests: dict[int, ChatRequest] = field(default_factory=dict)
    settled: dict[int, Result] = field(default_factory=dict)


Ask = ChatRequest | Result
"""One item of a run: a request to send, or a row already settled (its error)."""


def run(router: Router, job: MapJob, *, cache: RowCache | None = None,
        progress: Progress | None = None) -> MapResult:
    """Ask every row of ``job`` through ``router`` and return one Result per row, in input
    order. ``cache``: answers already recorded are not asked again, live ones are kept.
    ``progress``: told how far the run is. On Ctrl-C the finished rows are returned and
    ``.interrupted`` is set (the caller decides whether that is an exception)."""
    if not job.items:
        return job.empty()
    if job.provider is not None:
        router.provider(job.provider)  # UnknownProvider names the others
    results, elapsed, interrupted = ask_all(
        router, [prepare(job, row) for row in job.items], job.concurrency,
        cache=cache, progress=progress)
    return MapResult(job.items, results, job.schema, job.index, elapsed, interrupted)


def prepare(job: MapJob, row: Any) -> Ask:
    """The request of one row, or the error Result of a row that cannot fill it."""
    try:
        return job.request(row)
    except (InterpolationError, InvalidRequest) as exc:
        return failed(str(exc))


def ask_all(router: Router, asks: list[Ask], concurrency: int, *,
            cache: RowCache | None = None, progress: Progress | None = None
            ) -> tuple[list[Result], float, bool]:
    """Every request of ``asks`` through ``router``, at most ``concurrency`` in flight in
    all and at most a pinned provider's ``max_concurrency`` at that provider: one Result
    per item in order, the seconds it took, and whether Ctrl-C stopped it (the finished
    ones are kept, the others are ``NOT_RUN`` errors). Items that are Results already
    are kept as they are. ``cache`` and ``progress`` as in ``run``."""
    plan = _plan(asks, cache)
    if progress is not None:
        progress.start(len(asks))
    return _gather(router, len(asks), plan, concurrency, _limits(router, plan), progress,
                   cache)


def start(router: Router, job: MapJob, *, cache: RowCache | None = None,
          progress: Progress | None = None) -> Job[MapResult]:
    """``run`` in the background: a Job (``timmy_magic.jobs``) returned at once, its
    progress drawn from the router's loop as rows finish. The cache is looked up here,
    before it starts; live answers are recorded as they come. A cancel stops the rows in
    flight and the Job's result is the rows finished (``MapResult.interrupted``)."""
    if job.provider is not None:
        router.provider(job.provider)
    asks = [prepare(job, row) for row in job.items]
    plan = _plan(asks, cache)
    if progress is not None:
        progress.start(len(asks))

    async def work(handle: Job[MapResult]) -> MapResult:
        results, elapsed, interrupted = await aask_all(
            router, plan, len(asks), job.concurrency, cache=cache, progress=progress,
            handle=handle)
        return MapResult(job.items, results, job.schema, job.index, elapsed, interrupted)

    return Job.start(router, work, kind="map", label=job.template)


def plan_asks(asks: list[Ask], cache: RowCache | None) -> _Plan:
    """What ``aask_all`` sends: the cache looked up (in the caller's thread, SQLite off
    the loop), the rest to ask."""
    return _plan(asks, cache)


async def aask_all(router: Router, plan: _Plan, total: int, concurrency: int, *,
                   cache: RowCache | None = None, progress: Progress | None = None,
                   handle: Job[Any] | None = None) -> tuple[list[Result], float, bool]:
    """``ask_all`` on the router's loop, for background work: the planned requests (see
    ``plan_asks``; ``progress`` already started), live answers recorded as they come,
    the progress drawn and ``handle`` told as rows finish. A cancel stops the requests in
    flight: the finished ones are kept (``interrupted`` is True)."""
    results: list[Result | None] = [None] * total
    for i, res in plan.settled.items():
        results[i] = res
    pacer = _Pacer(progress, total) if progress is not None else None
    clock, t0, tokens = time.monotonic, time.monotonic(), 0

    def draw(final: bool = False) -> None:
        done = [r for r in results if r is not None]
        errors = sum(not r.ok for r in done)
        if handle is not None:
            handle.report(tokens=tokens, line=progress_line(len(done), total, errors, tokens,
                                                            clock() - t0, final))
        if pacer is not None:
            pacer.draw(len(done), errors, tokens, clock() - t0, final)

    def take(row: tuple[int, Result]) -> None:
        nonlocal tokens
        i, res = row
        results[i] = res
        tokens += res.usage.output_tokens or 0
        if cache is not None and res.ok:
            cache.record(plan.requests[i], res)
        draw()

    interrupted = False
    draw()
    try:
        if plan.requests:
            await _run(router, plan.requests, concurrency, _limits(router, plan), take,
                       threading.Event())
    except asyncio.CancelledError:
        interrupted = True
    final = [r if r is not None else failed(NOT_RUN) for r in results]
    draw(final=True)
    return final, clock() - t0, interrupted


def _limits(router: Router, plan: _Plan) -> dict[str, int]:
    """The ``max_concurrency`` of each provider the planned requests are pinned to."""
    return {name: cfg.max_concurrency for name in
            {r.provider for r in plan.requests.values() if r.provider is not None}
            if (cfg := router.provider(name).cfg).max_concurrency is not None}


def _plan(asks: list[Ask], cache: RowCache | None) -> _Plan:
    plan = _Plan()
    for i, req in enumerate(asks):
        if isinstance(req, Result):
            plan.settled[i] = req
            continue
        if cache is not None:
            try:
                hit = cache.lookup(req)
            except TimmyError as exc:  # a replay miss: nothing is sent for this row
                plan.settled[i] = failed(str(exc).splitlines()[0])
                continue
            if hit is not None:
                plan.settled[i] = hit
                continue
        plan.requests[i] = req
    return plan


async def _run(router: Router, requests: dict[int, ChatRequest], concurrency: int,
               limits: dict[str, int], out: Callable[[tuple[int, Result]], None],
               finished: threading.Event) -> None:
    """Every request on this loop, at most ``concurrency`` at once (and at most
    ``limits[p]`` pinned to provider ``p``); each outcome goes to ``out`` as it comes. A
    row's own failure is its Result; a cancel cancels them all. ``finished`` is set once
    every request has settled (permits, metrics, connections): a cancelled concurrent
    future says done at once, before that."""
    # One queue per limited provider, one for the rest: a worker waiting for a busy
    # provider's slot never holds a request another provider could be answering.
    queues: dict[str | None, list[tuple[int, ChatRequest]]] = {}
    for i, req in requests.items():
        key = req.provider if req.provider in limits else None
        queues.setdefault(key, []).append((i, req))
    slots = asyncio.Semaphore(concurrency)

    async def ask(req: ChatRequest) -> Result:
        async with slots:
            try:
                return await router.acomplete(req, cache=False)  # looked up in _plan
            except RoutingError as exc:
                return failed(str(exc), exc.trace)
            except TimmyError as exc:
                return failed(str(exc))

    async def worker(todo: Iterator[tuple[int, ChatRequest]]) -> None:
        for i, req in todo:  # workers of one queue share its iterator: memory flat
            out((i, await ask(req)))

    tasks = []
    for key, items in queues.items():
        todo = iter(items)
        width = min(concurrency, limits[key] if key is not None else concurrency, len(items))
        tasks += [asyncio.ensure_future(worker(todo)) for _ in range(width)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        finished.set()


def _gather(router: Router, total: int, plan: _Plan, concurrency: int,
            limits: dict[str, int], progress: Progress | None,
            cache: RowCache | None) -> tuple[list[Result], float, bool]:
    results: list[Result | None] = [None] * total
    for i, res in plan.settled.items():
        results[i] = res
    pacer = _Pacer(progress, total) if progress is not None else None
    t0 = time.monotonic()
    tokens = 0
    out: queue.SimpleQueue[tuple[int, Result]] = queue.SimpleQueue()
    interrupted = False
    finished = threading.Event()
    ended = threading.Event()  # the run's future is done: every row has been put
    fut: Any = None

    def take(i: int, res: Result) -> None:
        nonlocal tokens
        results[i] = res
        tokens += res.usage.output_tokens or 0
        if cache is not None and res.ok:
            cache.record(plan.requests[i], res)

    def drain() -> None:
        while True:
            try:
                take(*out.get_nowait())
            except queue.Empty:
                return

    def draw(final: bool = False) -> None:
        if pacer is not None:
            done = [r for r in results if r is not None]
            pacer.draw(len(done), sum(not r.ok for r in done), tokens,
                       time.monotonic() - t0, final)

    try:  # from before the run starts: a Ctrl-C anywhere from here cancels it
        draw()
        if plan.requests:
            fut = router.submit(_run(router, plan.requests, concurrency, limits, out.put,
                                      finished))
            # Wake every PROGRESS_EVERY, and at once when the run ends: not once per row
            # (each wake-up takes the GIL from the loop thread that runs the requests),
            # and never a poll's worth of waiting after the last row (measured in
            # benchmarks/bench_map.py: up to 0.25 s at the end of every map).
            fut.add_done_callback(lambda _: ended.set())
            while not ended.wait(PROGRESS_EVERY):
                drain()
                draw()
            drain()
            fut.result()  # a bug in the runner surfaces here
    except KeyboardInterrupt:
        interrupted = True
        try:
            if fut is not None:
                fut.cancel()
                finished.wait(CLEANUP_S)  # the requests' clean-up
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, keep what finished
            pass
        drain()
    elapsed = time.monotonic() - t0
    final = [r if r is not None else failed(NOT_RUN) for r in results]
    try:
        draw(final=True)
    except KeyboardInterrupt:  # the rows are kept all the same
        interrupted = True
    return final, elapsed, interrupted


class _Pacer:
    """When the progress is redrawn: when a row finished, once a second otherwise (the
    ETA), and at the end; what it says is ``progress_line``."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total = progress, total
        self._last = (-1, -math.inf)

    def draw(self, done: int, errors: int, tokens: int, elapsed: float,
             final: bool = False) -> None:
        if not final and done == self._last[0] and elapsed - self._last[1] < 1.0:
            return
        self._last = (done, elapsed)
        line = progress_line(done, self.total, errors, tokens, elapsed, final)
        if final:
            self.progress.finish(done, line)
        else:
            self.progress.advance(done, line)


def progress_line(done: int, total: int, errors: int, tokens: int, elapsed: float,
                  final: bool = False) -> str:
    """``37/100 rows · 2 errors · 412 tok/s · ETA 0:42`` (pure, for tests)."""
    parts = [f"{done}/{total} rows"]
    if errors:
        parts.append(count(errors, "error"))
    if elapsed > 0 and tokens:
        parts.append(f"{tokens / elapsed:.0f} tok/s")
    if final:
        parts.append(f"{elapsed:.1f}s")
    elif done and done < total:
        left = elapsed / done * (total - done)
        parts.append(f"ETA {int(left // 60)}:{int(left % 60):02d}")
    return " · ".join(parts)
