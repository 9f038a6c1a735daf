"""The benchmark driver: closed-loop concurrency on the router's own loop.

Each provider is measured alone, pinned with ``ChatRequest(provider=...)``, through
``router.astream`` (so the figures include everything a ``%%llm`` user gets: planning, the
adapter, SSE parsing). For every concurrency level ``c``, ``max(n, c)`` requests are sent
by ``c`` workers that each start the next request as soon as their previous one ends (the
same shape as vLLM's ``--max-concurrency``). Warm-up requests run first, one at a time, and
are reported apart.

The kernel thread only waits and redraws the progress (``model.progress.Progress``, passed
in: this package knows no notebook) when its line changed; an interrupt (KeyboardInterrupt)
cancels the run on the loop, and everything that finished is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from timmy_magic.bench.metrics import Timeline
from timmy_magic.bench.progress import progress_line, summary_line
from timmy_magic.bench.report import BenchResult, Cell
from timmy_magic.model.chat import ChatRequest, Delta, Done, Result, Trying
from timmy_magic.model.errors import TimmyError, UnknownProvider

if TYPE_CHECKING:
    from timmy_magic.model.progress import Progress
    from timmy_magic.routing.router import Router

clock: Callable[[], float] = time.perf_counter
DEFAULT_PROMPT = "The history of the printing press began"
"""Text to continue, not an instruction: the shipped default model (a base model asked in
completion mode) answers an instruction with about one token, which measures nothing; it
continues this for the whole ``max_tokens``, and a chat model still answers at length."""


class NothingToBench(TimmyError):
    """No provider could be selected for a benchmark."""


@dataclass(frozen=True, slots=True)
class BenchSettings:
    providers: tuple[str, ...]
    concurrency: tuple[int, ...] = (1,)
    n: int = 8
    max_tokens: int = 64
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    warmup: int = 1
    model: str | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("no provider to benchmark")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be positive integers")
        if self.n < 1 or self.max_tokens < 1 or self.warmup < 0:
            raise ValueError("n and max_tokens must be >= 1, warmup >= 0")
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ValueError("prompts must be non-empty text")

    def requests_at(self, concurrency: int) -> int:
        """Requests sent at one level: ``n``, but never fewer than the concurrency."""
        return max(self.n, concurrency)

    @property
    def total_requests(self) -> int:
        per_provider = self.warmup + sum(self.requests_at(c) for c in self.concurrency)
        return per_provider * len(self.providers)

    def request(self, provider: str, index: int) -> ChatRequest:
        prompt = self.prompts[index % len(self.prompts)]
        return ChatRequest.of(prompt, provider=provider, max_tokens=self.max_tokens,
                              model=self.model, temperature=self.temperature)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["providers"], d["concurrency"] = list(self.providers), list(self.concurrency)
        d["prompts"] = list(self.prompts)
        return d


# ------------------------------------------------------------------ provider choice


def choose_providers(router: Router, names: Sequence[str] | None = None
                     ) -> tuple[list[str], list[str]]:
    """(providers to bench, notes). Without names, every provider whose fresh health check
    says healthy (cloud ones only while the cloud gate is open). Named ones must exist and
    are benched whatever their health (failures are counted), except those that cannot
    even be asked (``CANNOT_ANSWER``): left out with a note saying why, and when none is
    left, NothingToBench says why for each. Either way managed servers not running yet
    are started first. The probes also tell the router the model each server has loaded."""
    if names:
        unknown = [n for n in names if n not in router.names]
        if unknown:
            raise UnknownProvider(f"unknown provider {', '.join(unknown)}; configured: "
                                  f"{', '.join(router.names) or '(none)'}")
        chosen = list(dict.fromkeys(names))
        reports = {**router.health(), **router.check_health(chosen)}  # (not all are probed)
        notes = _start_stopped(router, chosen, reports)
        if notes:
            reports = {**reports, **router.health(), **router.check_health(chosen)}
        usable = [n for n in chosen if _can_answer(reports[n])]
        left_out = [f"{n} ({_why(reports[n])})" for n in chosen if n not in usable]
        if not usable:
            raise NothingToBench(f"nothing to benchmark: {'; '.join(left_out)}")
        if left_out:
            notes.append(f"left out, cannot be asked: {'; '.join(left_out)}")
        down = [f"{n} ({reports[n].state.replace('_', ' ')})" for n in usable
                if reports[n].state != "healthy"]
        if down:
            notes.append(f"not healthy before the run: {', '.join(down)}")
        return usable, notes
    reports = router.check_health()
    notes = _start_stopped(router, router.names, reports)
    startable = [n for n in router.names if n in reports and reports[n].state == "stopped"]
    if startable:
        reports = {**reports, **router.check_health(startable)}
    healthy = [n for n in router.names if n in reports and reports[n].state == "healthy"]
    gate = router.gate()
    if not gate.open:
        cloud = [n for n in healthy if reports[n].is_cloud]
        healthy = [n for n in healthy if n not in cloud]
        if cloud:
            notes.append(f"skipped {', '.join(cloud)}: cloud gate closed ({gate.reason})")
    if not healthy:
        states = ", ".join(f"{n} {r.state.replace('_', ' ')}"
                           for n, r in reports.items()) or "none checked"
        raise NothingToBench(f"no healthy provider to benchmark ({states}); start a server "
                             "or name providers with -p")
    return healthy, notes


CANNOT_ANSWER = frozenset({"disabled", "not_configured", "not_installed", "misconfigured",
                           "stopped"})
"""Health states in which a named provider cannot even be asked: no key, no binary, a key
its server rejects, a managed server that would not start, or turned off with nothing
answering at its address. (One that is down or not running is benched by name all the
same: the user asked for it, and its failures are counted.)"""


def _can_answer(report: Any) -> bool:
    if report.state == "disabled":  # benched by name if its server answers all the same
        return any(e.state in ("healthy", "degraded") for e in report.endpoints)
    return report.state not in CANNOT_ANSWER


def _why(report: Any) -> str:
    state = report.state.replace("_", " ")
    detail = report.hint or report.last_error
    return f"{state}: {detail}" if detail else state


def _start_stopped(router: Router, names: Sequence[str], reports: dict[str, Any]
                   ) -> list[str]:
    """Start the managed servers among ``names`` that are not running yet (never a dead
    end); a launch failure is a note, and the provider stays stopped."""
    notes = []
    for name in [n for n in names if n in reports and reports[n].state == "stopped"]:
        try:
            progress = router.start_server(name)
        except Exception as exc:  # noqa: BLE001 - a launch failure is a note, not the end
            notes.append(f"could not start {name}: {exc}")
            continue
        notes.append(f"started {name} for the benchmark"
                     + (f" ({progress[-1]})" if progress else ""))
    return notes


# ------------------------------------------------------------------ one request


def _timeline(start: float, chunks: list[float], end: float, result: Result,
              attempts: int, estimated_input: int) -> Timeline:
    usage = result.usage
    output = usage.output_tokens if usage.output_tokens is not None else len(chunks)
    estimated = usage.estimated or usage.output_tokens is None
    if usage.input_tokens is not None:
        prompt = usage.input_tokens
    else:  # the request's own estimate (model.tokens): flagged as one
        prompt, estimated = estimated_input, True
    return Timeline(start, tuple(chunks), end, prompt, output, estimated,
                    "incomplete" if result.error else "ok", result.error, max(1, attempts),
                    result.model)


async def measure(router: Router, request: ChatRequest) -> Timeline:
    """Send one request through the router and time every content chunk on arrival."""
    start = clock()
    chunks: list[float] = []
    attempts = 0
    estimated_input = request.input_tokens
    try:
        stream = router.astream(request, cache=False)  # a benchmark measures live answers
        async with aclosing(stream) as events:  # finalised here, not later by the GC
            async for ev in events:
                if isinstance(ev, Delta):
                    chunks.append(clock())
                elif isinstance(ev, Trying):
                    attempts += 1
                elif isinstance(ev, Done):
                    end = clock()
                    return _timeline(start, chunks, end, ev.result, attempts, estimated_input)
        error = "the stream ended without a final event"
    except Exception as exc:  # noqa: BLE001 - counted, never dropped: a benchmark reports it
        error = " ".join(str(exc).split()) or type(exc).__name__
    return Timeline(start, tuple(chunks), clock(), status="error", error=error,
                    attempts=max(1, attempts))


# ------------------------------------------------------------------ the run


@dataclass
class Collector:
    """What the run has produced so far. Written on the loop thread only; the kernel
    thread reads counters for the progress bar and, once ``finished`` is set, the rest."""

    settings: BenchSettings
    cells: list[Cell] = field(default_factory=list)
    warmups: list[tuple[str, int, Timeline]] = field(default_factory=list)
    done: int = 0
    label: str = "starting"
    finished: threading.Event = field(default_factory=threading.Event)


async def _warm(router: Router, s: BenchSettings, provider: str, col: Collector) -> None:
    for i in range(s.warmup):
        col.label = f"{provider} · warm-up {i + 1}/{s.warmup}"
        col.warmups.append((provider, i, await measure(router, s.request(provider, i))))
        col.done += 1


async def _level(router: Router, s: BenchSettings, cell: Cell, col: Collector) -> None:
    indexes = iter(range(cell.total))  # shared: each worker takes the next request

    async def worker() -> None:
        for i in indexes:
            cell.in_flight += 1
            cell.peak = max(cell.peak, cell.in_flight)
            start = clock()
            try:
                tl = await measure(router, s.request(cell.provider, s.warmup + i))
            except asyncio.CancelledError:
                cell.timelines.append(Timeline(start, end=clock(), status="cancelled",
                                               error="interrupted"))
                raise
            finally:
                cell.in_flight -= 1
            cell.timelines.append(tl)
            col.done += 1
            col.label = f"{cell.provider} · c={cell.concurrency} · " \
                        f"{len(cell.timelines)}/{cell.total}"

    cell.started, cell.cpu_start = clock(), time.thread_time()
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(cell.concurrency, cell.total)):
                tg.create_task(worker())
    finally:
        cell.ended, cell.cpu_s = clock(), time.thread_time() - cell.cpu_start


async def drive(router: Router, s: BenchSettings, col: Collector) -> None:
    """The whole run, provider after provider, level after level."""
    try:
        for provider in s.providers:
            await _warm(router, s, provider, col)
            for c in s.concurrency:
                cell = Cell(provider, c, s.requests_at(c), model_hint=_model_hint(router,
                                                                                   provider, s))
                col.cells.append(cell)
                await _level(router, s, cell, col)
    finally:
        col.finished.set()


def _model_hint(router: Router, provider: str, s: BenchSettings) -> str | None:
    if s.model:
        return s.model
    cfg = router.provider(provider).cfg
    return cfg.default_model or next(iter(router.health()[provider].models), None)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(
                "model name")), cpu)
    except OSError:
        pass
    from timmy_magic._version import __version__

    return {"system": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "timmy_magic": __version__,
            "started": datetime.now(UTC).isoformat(timespec="seconds")}


def execute(router: Router, settings: BenchSettings, progress: Progress | None = None,
            notes: Sequence[str] = (), poll: float = 0.1) -> BenchResult:
    """Run ``settings`` on the router's loop and wait here, redrawing ``progress`` at most
    every ``poll`` seconds and finishing it with a summary line. On KeyboardInterrupt,
    stop the run and return what finished (``result.interrupted``)."""
    if router.runner.on_loop():
        raise RuntimeError("bench.run() cannot be called from the router's own loop")
    col = Collector(settings)
    machine = machine_info()
    total, started, shown = settings.total_requests, clock(), ""
    if progress is not None:
        progress.start(total)
    fut = router.runner.submit(drive(router, settings, col))
    interrupted = False
    try:
        while True:
            try:
                fut.result(timeout=poll)
                break
            except concurrent.futures.TimeoutError:
                line = progress_line(col.done, total, col.label)
                if progress is not None and line != shown:
                    progress.advance(col.done, line)
                    shown = line
    except KeyboardInterrupt:
        interrupted = True
        fut.cancel()
        col.finished.wait(10)  # the cancelled requests record themselves first
    finally:
        if progress is not None:
            with suppress(KeyboardInterrupt):  # the results are kept all the same
                progress.finish(col.done, summary_line(col.done, total, clock() - started,
                                                       interrupted))
    stop_note = ("interrupted: later runs were not made; in-flight requests are counted "
                 "as cancelled")
    all_notes = list(notes) + ([stop_note] if interrupted else [])
    return BenchResult.build(settings.as_dict(), col.cells, col.warmups, machine,
                             interrupted, all_notes)
