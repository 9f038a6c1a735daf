"""A piece of work that runs in the background on the router's loop: a ``Job``.

How a feature runs in the background (``%%llm --bg``, ``timmy_magic.map(...,
background=True)``, and any other long run that should not hold the notebook):

1. Do everything that can fail at once in the caller's thread (parse, look up, build
   the requests), so a user mistake is still a one-line error in its cell.
2. Write the rest as ``async def work(job: Job[T]) -> T``. It runs on the router's loop
   thread (``Router.submit``), so it awaits the router's async methods (``acomplete``,
   ``astream``...) and shares the router's limits, breakers and metrics with every other
   request. It tells how far it is with ``job.report(provider=..., tokens=..., line=...)``
   (what ``repr(job)`` and ``%llm jobs`` show), and draws its own progress in the display
   it made before it was started (display updates by display id work from any thread).
3. On ``job.cancel()`` the work gets ``CancelledError`` at its current ``await``, which
   closes the streams it holds. It may let it propagate (the job is ``cancelled`` and
   ``result()`` raises ``JobCancelled``) or catch it and return what it has (the job is
   ``cancelled`` and ``result()`` returns that partial value).
4. ``Job.start(router, work, kind=..., label=...)`` returns the handle at once;
   ``add_done_callback`` runs (on the loop thread) once it settled, to keep its value
   where the caller's foreground form would (``timmy_magic.last()``...).
5. The notebook face (``timmy_magic.notebook.api``) sets ``job.cell`` to the running
   cell's number and adds the job to the session's ``JobBoard`` (``session.jobs``), so
   ``%llm jobs`` lists it and ``%llm cancel``, ``%unload_ext`` and the kernel's exit
   stop it; ``map(..., background=True)`` is the example to follow
   (``batch.start`` + ``notebook.api.map``).

Every state change happens on the loop thread; the caller's thread only reads, waits
(``result``, ``await job``) and asks (``cancel``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from timmy_magic.model.errors import TimmyError
from timmy_magic.text.markup import plain, shorten

if TYPE_CHECKING:
    from timmy_magic.routing.router import Router

T = TypeVar("T")
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Work = Callable[["Job[T]"], Coroutine[Any, Any, T]]


class JobCancelled(TimmyError):
    """The job was cancelled before it had anything to return."""


class JobTimeout(TimmyError, TimeoutError):
    """``Job.result(timeout)`` waited that long and the job is still running."""


@dataclass
class JobProgress:
    """What a job says about itself (written on the loop thread by its work)."""

    provider: str | None = None
    tokens: int = 0
    line: str = ""


class Job(Generic[T]):
    """A handle on background work: ``done()``, ``result(timeout=None)``, ``cancel()``,
    ``status`` (queued, running, done, failed, cancelled), ``await job``. See the module
    docstring for how a feature runs as one."""

    def __init__(self, kind: str, label: str = "", *, var: str | None = None,
                 cell: int | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.id = 0
        """Set by the ``JobBoard`` that lists it (0: listed nowhere)."""
        self.kind, self.label, self.var, self.cell = kind, label, var, cell
        self.progress = JobProgress()
        self.created = clock()
        self.started: float | None = None
        self.ended: float | None = None
        self._clock = clock
        self._state: JobState = "queued"
        self._cancel_asked = False
        self._task: asyncio.Task[Any] | None = None
        self._outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._callbacks: list[Callable[[Job[T]], None]] = []
        self._router: Router | None = None

    @classmethod
    def start(cls, router: Router, work: Work[T], *, kind: str, label: str = "",
              var: str | None = None, cell: int | None = None) -> Job[T]:
        """Run ``work(job)`` on ``router``'s loop and return the job at once."""
        job: Job[T] = cls(kind, label, var=var, cell=cell)
        job._router = router
        # A fresh context: the work must not carry the starting cell's context variables.
        # ipykernel keys an output's parent cell on one; without it, an update by display
        # id goes out with the cell running then, which is how front ends (and nbclient)
        # take it and route it to the display's own cell, wherever that is.
        fut = contextvars.Context().run(router.submit, job._main(work))
        # the loop stopped before the work ever ran (shutdown): settle all the same
        fut.add_done_callback(lambda _: job._settle("cancelled", None, JobCancelled(
            f"{job.name}: cancelled before it started")))
        return job

    @classmethod
    def settled(cls, value: T, *, kind: str, label: str = "", var: str | None = None,
                cell: int | None = None) -> Job[T]:
        """A job that is done already (its value was at hand: an answer from the cache),
        so a caller hands back the same kind of handle either way."""
        job: Job[T] = cls(kind, label, var=var, cell=cell)
        job.started = job.created
        job._settle("done", value, None)
        return job

    # ------------------------------------------------------------ on the loop

    async def _main(self, work: Work[T]) -> None:
        self._task = asyncio.current_task()
        if self._cancel_asked:
            self._settle("cancelled", None, JobCancelled(f"{self.name}: cancelled"))
            return
        self._state, self.started = "running", self._clock()
        try:
            value = await work(self)
        except asyncio.CancelledError:
            self._settle("cancelled", None, JobCancelled(f"{self.name}: cancelled"))
        except Exception as exc:  # noqa: BLE001 - the work's failure: result() raises it
            self._settle("failed", None, exc)
        else:  # a cancel that came after the work's last await did not stop it: done
            task = self._task
            stopped = task is not None and task.cancelling() > 0
            self._settle("cancelled" if stopped else "done", value, None)

    def _settle(self, state: JobState, value: T | None, error: BaseException | None) -> None:
        if self._outcome.done():
            return
        self._state, self.ended = state, self._clock()
        if error is not None:
            self._outcome.set_exception(error)
        else:
            self._outcome.set_result(value)  # type: ignore[arg-type]
        for fn in self._callbacks:
            fn(self)
        self._callbacks.clear()

    def _cancel_on_loop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def report(self, *, provider: str | None = None, tokens: int | None = None,
               line: str | None = None) -> None:
        """The work says how far it is (from the loop thread)."""
        if provider is not None:
            self.progress.provider = provider
        if tokens is not None:
            self.progress.tokens = tokens
        if line is not None:
            self.progress.line = line

    def add_done_callback(self, fn: Callable[[Job[T]], None]) -> None:
        """Call ``fn(job)`` once it settled (on the loop thread; at once if it has)."""
        if self._outcome.done():
            fn(self)
        else:
            self._callbacks.append(fn)

    # ------------------------------------------------------------ from any thread

    @property
    def name(self) -> str:
        return f"job {self.id}" if self.id else f"{self.kind} job"

    @property
    def status(self) -> JobState:
        return self._state

    def done(self) -> bool:
        return self._outcome.done()

    def cancel(self) -> bool:
        """Ask the work to stop (it keeps what it has, if it can). False if it had ended."""
        if self.done():
            return False
        self._cancel_asked = True
        router = self._router
        if router is not None and router.runner.alive:
            router.runner.loop.call_soon_threadsafe(self._cancel_on_loop)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it settled (in short steps, so a kernel interrupt lands); True if it
        did within ``timeout``."""
        router = self._router
        if not self.done() and router is not None and router.runner.on_loop():
            raise RuntimeError(f"{self.name}: waited for on the router's own loop (would "
                               "deadlock): await it instead")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if step <= 0:
                return self.done()
            try:
                self._outcome.exception(step)
                return True
            except concurrent.futures.TimeoutError:
                continue
            except concurrent.futures.CancelledError:  # pragma: no cover - never cancelled
                return True

    def result(self, timeout: float | None = None) -> T:
        """Its value once it settled: the work's return value (partial if cancelled midway);
        raises what the work raised, ``JobCancelled``, or ``JobTimeout``."""
        if not self.wait(timeout):
            raise JobTimeout(f"{self.name} is still {self.status} after {timeout:g}s")
        return self._outcome.result()

    def exception(self) -> BaseException | None:
        return self._outcome.exception() if self.done() else None

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self._outcome).__await__()

    def elapsed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        end = self.ended if self.ended is not None else (
            now if now is not None else self._clock())
        return max(end - self.started, 0.0)

    def describe(self) -> str:
        """What it is doing, in one line: ``running · llama · 42 tokens · 3.1s``."""
        parts: list[str] = [self.status]
        if self.progress.provider:
            parts.append(self.progress.provider)
        if self.progress.tokens:
            parts.append(f"{self.progress.tokens} tokens")
        if self.progress.line:
            parts.append(self.progress.line)
        if self.started is not None:
            parts.append(f"{self.elapsed():.1f}s")
        return " · ".join(parts)

    def __getattr__(self, name: str) -> Any:
        """Once done, the value's attributes read through (``job.text`` is
        ``job.result().text``); before, a clear AttributeError saying so."""
        if name.startswith("_"):
            raise AttributeError(name)
        outcome = self.__dict__.get("_outcome")
        if outcome is None or not outcome.done() or outcome.exception() is not None:
            state = self.__dict__.get("_state", "queued")
            raise AttributeError(f"{name!r}: the job is {state} and has no result to read it "
                                 "from (job.result() waits for it)")
        return getattr(outcome.result(), name)

    def __repr__(self) -> str:
        who = f" {self.var}" if self.var else ""
        what = f" {shorten(self.label, 40)!r}" if self.label else ""
        return plain(f"<Job {self.id or '-'} {self.kind}{who}{what}: {self.describe()}>")
