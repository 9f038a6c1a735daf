"""Running an evaluation: every target asks every row through the cascade (one pool of
requests, row by row across the targets, within the call's ``concurrency`` and each
provider's ``max_concurrency``), then the answers are scored: at once for a score that
needs no model, by a second pool of grading requests for a ``Judge``.

The answer cache and the progress are passed in, as to ``batch.run``: a request is keyed
with its provider and model, so each (row, target) is cached on its own: a re-run asks
nothing and a new target asks only its own rows. Ctrl-C keeps the finished answers
(``Evaluation.interrupted``). A failed row or target is an error row, never a stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from timmy_magic.batch import (
    MapError,
    MapJob,
    RowCache,
    aask_all,
    ask_all,
    namespace,
    plan,
    plan_asks,
    prepare,
)
from timmy_magic.evals.evaluation import Answer, Evaluation
from timmy_magic.evals.scores import Judge, ScoreError, Scoring, scoring_of
from timmy_magic.evals.targets import EvalError, Target, targets_of
from timmy_magic.jobs import Job
from timmy_magic.model.chat import ChatRequest, Result
from timmy_magic.model.errors import UnknownProvider
from timmy_magic.routing.gate import cost_usd

if TYPE_CHECKING:
    from timmy_magic.model.progress import Progress
    from timmy_magic.routing.router import Router


@dataclass(frozen=True)
class EvalJob:
    """An evaluation checked before anything is sent: one map job per target."""

    targets: tuple[Target, ...]
    jobs: tuple[MapJob, ...]
    scoring: Scoring | Judge | None
    concurrency: int

    @property
    def items(self) -> list[Any]:
        return self.jobs[0].items

    def asks(self) -> list[ChatRequest | Result]:
        """Row by row, every target's request (or the row's error), row-major."""
        return [prepare(job, row) for row in self.items for job in self.jobs]


def plan_eval(router: Router, rows: Any, prompt: str, targets: Any, score: Any = None, *,
              system: str | None = None, schema: Any = None, concurrency: int = 8,
              max_tokens: int | None = None, temperature: float | None = None) -> EvalJob:
    """The checked job, or an EvalError naming what is wrong (nothing sent)."""
    chosen = targets_of(targets)
    for t in chosen:
        try:
            router.provider(t.provider)
        except UnknownProvider as exc:
            raise EvalError(f"evaluate: target {t.label!r}: {exc}") from None
    try:  # the rows read once (they may be a generator), then one job per target
        first = plan(prompt, rows, schema=schema, provider=chosen[0].provider,
                     model=chosen[0].model, concurrency=concurrency, max_tokens=max_tokens,
                     system=system, temperature=temperature)
    except MapError as exc:
        raise EvalError(str(exc).replace("map:", "evaluate:", 1)) from None
    jobs = tuple(dataclasses.replace(first, provider=t.provider, model=t.model)
                 for t in chosen)
    scoring = scoring_of(score, jobs[0].schema)
    if isinstance(scoring, Judge):
        try:
            router.provider(scoring.target.provider)
        except UnknownProvider as exc:
            raise EvalError(f"evaluate: the judge {scoring.target.label!r}: {exc}") from None
    elif isinstance(scoring, Scoring) and scoring.field and jobs[0].items:
        known = set(namespace(jobs[0].items[0]))
        if scoring.field not in known:
            raise EvalError(f"evaluate: score {scoring.name}: the rows have no field "
                            f"'{scoring.field}' (fields: "
                            f"{', '.join(sorted(known - {'row'})[:12]) or '(none)'})")
    return EvalJob(chosen, jobs, scoring, concurrency)


ProgressFor = Callable[[str], "Progress | None"]
"""The progress display of a phase (``evaluate``, ``judge``), or None for none."""


def run_eval(router: Router, job: EvalJob, *, cache: RowCache | None = None,
             progress: ProgressFor | None = None) -> Evaluation:
    """Ask, then score (see the module's doc)."""
    t0 = time.monotonic()
    asks = job.asks()
    results, _elapsed, interrupted = ask_all(
        router, asks, job.concurrency, cache=cache,
        progress=progress("evaluate") if progress is not None else None)
    ev = collect(router, job, results, asks, cache=cache, progress=progress,
                 grade=not interrupted)
    ev.elapsed_s = time.monotonic() - t0
    ev.interrupted = ev.interrupted or interrupted
    return ev


def collect(router: Router | None, job: EvalJob, results: list[Result],
            asks: list[ChatRequest | Result], *, cache: RowCache | None = None,
            progress: ProgressFor | None = None, grade: bool = True) -> Evaluation:
    """The Evaluation of ``results`` (row-major, as ``EvalJob.asks``): costs from the
    configured prices when a result has none (a cached or batch answer), then scored."""
    width = len(job.targets)
    answers = []
    for n, res in enumerate(results):
        i, k = divmod(n, width)
        answers.append(Answer(i, job.targets[k], res, cost_usd=_cost(router, job.targets[k],
                                                                      res)))
    spec = job.jobs[0].schema
    ev = Evaluation(job.items, job.targets, answers,
                    job.scoring.name if job.scoring is not None else None, spec,
                    job.jobs[0].index)
    if isinstance(job.scoring, Scoring):
        ev.answers = [_scored(job.scoring, job.items[a.row], a) for a in answers]
    elif isinstance(job.scoring, Judge) and grade:
        if router is None:
            raise EvalError("evaluate: a judge needs a router to ask")
        ev.interrupted = _judge(router, job.scoring, ev, asks, job.concurrency, cache,
                                progress)
    return ev


def _scored(scoring: Scoring, row: Any, a: Answer) -> Answer:
    if not a.result.ok:
        return a
    try:
        return dataclasses.replace(a, score=scoring(namespace(row), row, a.result))
    except ScoreError as exc:
        return dataclasses.replace(a, score_error=str(exc))


def _judge(router: Router, judge: Judge, ev: Evaluation, asks: list[ChatRequest | Result],
           concurrency: int, cache: RowCache | None, progress: ProgressFor | None) -> bool:
    """Grade every answered row with ``judge``; True when Ctrl-C stopped it."""
    todo, requests = _grading(judge, ev, asks)
    if not requests:
        return False
    graded, _elapsed, interrupted = ask_all(
        router, requests, concurrency, cache=cache,
        progress=progress("judge") if progress is not None else None)
    _graded(router, judge, ev, todo, graded)
    return interrupted


def _grading(judge: Judge, ev: Evaluation, asks: list[ChatRequest | Result]
             ) -> tuple[list[int], list[ChatRequest | Result]]:
    """(the answers to grade, by position; their grading requests)."""
    todo = [n for n, a in enumerate(ev.answers) if a.result.ok]
    requests: list[ChatRequest | Result] = []
    for n in todo:
        asked = asks[n]
        prompt = asked.messages[-1].text if isinstance(asked, ChatRequest) else ""
        row = ev.rows[ev.answers[n].row]
        requests.append(judge.request(namespace(row), prompt, ev.answers[n].result.text))
    return todo, requests


def _graded(router: Router, judge: Judge, ev: Evaluation, todo: list[int],
            graded: list[Result]) -> None:
    """Each grade (or why there is none) and its cost, into the answer it grades."""
    for n, res in zip(todo, graded):
        a = ev.answers[n]
        spent = _cost(router, judge.target, res)
        try:
            score, reason = judge.grade(res)
        except ScoreError as exc:
            ev.answers[n] = dataclasses.replace(a, score_error=str(exc), judge_cost_usd=spent)
            continue
        ev.answers[n] = dataclasses.replace(a, score=score, judge_reason=reason,
                                            judge_cost_usd=spent)


def start_eval(router: Router, job: EvalJob, *, cache: RowCache | None = None,
               progress: Progress | None = None) -> Job[Evaluation]:
    """``run_eval`` in the background: a Job (``timmy_magic.jobs``) returned at once. The
    cache is looked up here, before it starts (a judge's, on a worker thread once the
    answers are in); ``progress`` is drawn as answers come. A cancel stops the requests in
    flight: the Job's result is the Evaluation of what finished (``interrupted``)."""
    asks = job.asks()
    plan = plan_asks(asks, cache)
    if progress is not None:
        progress.start(len(asks))

    async def work(handle: Job[Evaluation]) -> Evaluation:
        t0 = time.monotonic()
        results, _elapsed, interrupted = await aask_all(
            router, plan, len(asks), job.concurrency, cache=cache, progress=progress,
            handle=handle)
        ev = collect(router, job, results, asks, grade=False)
        if isinstance(job.scoring, Judge) and not interrupted:
            todo, requests = _grading(job.scoring, ev, asks)
            if requests:
                graded_plan = await asyncio.to_thread(plan_asks, requests, cache)
                graded, _elapsed, interrupted = await aask_all(
                    router, graded_plan, len(requests), job.concurrency, cache=cache,
                    handle=handle)
                _graded(router, job.scoring, ev, todo, graded)
        ev.elapsed_s, ev.interrupted = time.monotonic() - t0, interrupted
        return ev

    label = f"{len(job.items)} rows × {len(job.targets)} targets"
    return Job.start(router, work, kind="evaluate", label=label)


def _cost(router: Router | None, target: Target, res: Result) -> float:
    """What the answer cost: the attempt's figure, else (a cached or batch answer) its
    usage at the prices providers.yaml gives the target's model."""
    if res.cost_usd or router is None or not res.ok:
        return res.cost_usd
    try:
        cfg = router.provider(target.provider).cfg
    except UnknownProvider:
        return 0.0
    mc = cfg.model(res.model) or cfg.model(target.model or cfg.default_model)
    if mc is None:
        return 0.0
    return cost_usd(res.usage.input_tokens, res.usage.output_tokens, mc.price_per_1k_input,
                    mc.price_per_1k_output)

