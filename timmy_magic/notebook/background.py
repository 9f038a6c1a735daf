"""``%%llm --bg``: a cell that returns at once with a ``Job`` while its answer streams into
the cell's own output.

Everything that can fail at once (options, context, the request, the cache lookup, the
placeholder display) has run in the cell, as in the foreground. The stream then runs as
a ``Job`` on the router's loop thread (``timmy_magic.jobs``): the same view is updated by
its display id from there (a front end routes an update to the output that holds that
id, whichever cell runs now), a ticker redraws held-back text, and the end is the
foreground's own ``finish`` (keep, record in the cache, the final render with its
footer). A cancel (``%llm cancel``, ``job.cancel()``, unloading, kernel shutdown) closes
the stream and keeps the partial answer, marked interrupted, as Ctrl-C does in the
foreground. A kernel interrupt reaches only the foreground cell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from timmy_magic.jobs import Job
from timmy_magic.model.chat import ChatRequest, Result
from timmy_magic.model.errors import RoutingError
from timmy_magic.notebook.display.render import (
    USER_INTERRUPT,
    AnswerCollector,
    NotebookView,
    View,
    feed,
)

if TYPE_CHECKING:
    from timmy_magic.notebook.session import CellOptions, Session

Finish = Callable[[Result, bool], Result]


def tick_every(session: Session, view: View) -> float | None:
    """How often held-back text is redrawn (None: never, only the final render)."""
    ups = session.settings.updates_per_second
    if not isinstance(view, NotebookView) or not view.live or ups <= 0:
        return None
    return min(max(1.0 / ups, 0.02), 0.5)


def cell_number(session: Session) -> int | None:
    count = getattr(session.shell, "execution_count", None)
    return count if isinstance(count, int) else None


def start_answer(session: Session, req: ChatRequest, opts: CellOptions, view: View,
                 hit: Result | None, finish: Finish, prompt: str, key: str) -> Job[Result]:
    """Start the answer to ``req`` as a Job; ``hit``: the cache's answer (no request)."""
    clock = time.monotonic
    got = AnswerCollector(clock())
    every = tick_every(session, view)
    if hit is not None:  # the answer is at hand: shown now, as in the foreground
        done = Job.settled(finish(hit, False), kind="llm", label=prompt, var=opts.out,
                           cell=cell_number(session))
        done.report(provider=hit.provider, tokens=hit.usage.output_tokens or 0)
        return _listed(session, done, opts.out, key)
    view.start(got.t0)

    async def work(job: Job[Result]) -> Result:
        ticker = asyncio.ensure_future(_tick(view, every, clock)) if every else None
        interrupted = False
        result: Result | None = None
        try:
            async for ev in session.router.astream(req, cache=False):
                result = feed(ev, view, got, clock())
                job.report(provider=got.provider, tokens=len(got.parts))
        except asyncio.CancelledError:
            interrupted = True
            result = got.result or got.partial(
                USER_INTERRUPT, session._model_of(req, got.provider), clock())
        except RoutingError as exc:
            view.fail(session.failure(exc, opts))
            raise
        finally:
            if ticker is not None:
                ticker.cancel()
        if result is None:  # pragma: no cover - every stream ends with Done or raises
            raise RuntimeError("the answer stream ended without its final event")
        job.report(provider=result.provider or got.provider,
                   tokens=result.usage.output_tokens or len(got.parts))
        return finish(result, interrupted)

    job: Job[Result] = Job.start(session.router, work, kind="llm", label=prompt,
                                 var=opts.out, cell=cell_number(session))
    return _listed(session, job, opts.out, key)


def _listed(session: Session, job: Job[Any], var: str | None, key: str) -> Job[Any]:
    """``job`` on the session's board, and in ``var`` (if any) from now on: the Job, whose
    ``result()`` is the answer, never rebound under the user by the loop thread. A cell
    the front end names (``cell:<id>``) that runs again replaces its job still running
    (its display is gone, and a local model would serve both)."""
    session.jobs.add(job, key if key.startswith("cell:") else None)
    if var:
        session.shell.user_ns[var] = job
    return job


def start_columns(session: Session, reqs: list[ChatRequest], view: Any,
                  columns: tuple[Any, ...], t0: float,
                  finish: Callable[[list[Result], dict[str, str], bool], Any],
                  opts: CellOptions, prompt: str, key: str) -> Job[Any]:
    """A side-by-side cell as a Job: the columns stream into their grid from the loop;
    ``finish`` makes the Comparison (the Job's result) and renders it."""
    from timmy_magic.compare import ColumnFeed

    clock = time.monotonic
    if not reqs:  # every column from the cache: shown now, as in the foreground
        done = Job.settled(finish([], {}, False), kind="side by side", label=prompt,
                           var=opts.out, cell=cell_number(session))
        return _listed(session, done, opts.out, key)

    async def work(job: Job[Any]) -> Any:
        feed = ColumnFeed(view, columns, t0)
        ticker = asyncio.ensure_future(_tick(view, 0.05, clock)) if opts.stream else None
        interrupted = False
        try:
            async for item in session.router.astream_many(reqs):
                feed(item, clock())
                job.report(tokens=sum(len(g.parts) for g in feed.got))
        except asyncio.CancelledError:
            interrupted = True
        finally:
            if ticker is not None:
                ticker.cancel()
        return finish(feed.final(interrupted, clock()), feed.errors, interrupted)

    job: Job[Any] = Job.start(session.router, work, kind="side by side", label=prompt,
                              var=opts.out, cell=cell_number(session))
    return _listed(session, job, opts.out, key)


async def _tick(view: View, every: float, clock: Callable[[], float]) -> None:
    """Give the view its chance to redraw held-back text, as the foreground's ticks do."""
    while True:
        await asyncio.sleep(every)
        with suppress(Exception):  # a display that cannot redraw must not end the job
            view.tick(clock())


def job_bundle(job: Job[Any]) -> dict[str, str]:
    """How a job shows when displayed: its state line."""
    from timmy_magic.text.markup import md, plain

    line = f"job {job.id}: {job.describe()}"
    return {"text/markdown": f"*{md(line)}*", "text/plain": plain(line)}


def show_job(session_of: Callable[[], Session | None], job: Job[Any]) -> None:
    """The display of a Job (registered with IPython): nothing for the cell that started
    it (its output is the live answer above), else its value once it has one (a Result,
    a Comparison, a MapResult), else its state line."""
    from timmy_magic.notebook.display.render import display

    session = session_of()
    if session is not None and job.cell is not None and job.cell == cell_number(session):
        return
    if job.done() and job.exception() is None:
        display(job.result())
        return
    display(job_bundle(job), raw=True)


