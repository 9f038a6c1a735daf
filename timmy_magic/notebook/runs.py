"""``map`` and ``evaluate`` over a notebook session: the session's answer cache as the
batch pool's ``RowCache`` (``SessionAnswers``), and an evaluation run with it, its
progress shown where the code runs, its result kept as ``timmy_magic.last()``. Used by
``timmy_magic.map``/``evaluate`` (``api``) and by ``%llm eval`` (``magics.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy_magic import evals
from timmy_magic.batch import MapError
from timmy_magic.evals import EvalError, EvalInterrupted
from timmy_magic.notebook.display.progress import make_progress

if TYPE_CHECKING:
    from timmy_magic.evals import Evaluation
    from timmy_magic.jobs import Job
    from timmy_magic.model.chat import ChatRequest, Result
    from timmy_magic.notebook.cached import CellCache
    from timmy_magic.notebook.session import Session
    from timmy_magic.routing.router import Router


def run_evaluation(session: Session | None, router: Router, rows: Any, prompt: str,
                   targets: Any, score: Any = None, *, system: str | None = None,
                   schema: Any = None, concurrency: int = 8, max_tokens: int | None = None,
                   temperature: float | None = None, export: str | Path | None = None,
                   results: str | Path | None = None, cache: bool | None = None,
                   progress: bool = True, background: bool = False,
                   var: str | None = None) -> Any:
    """``timmy_magic.evaluate`` on ``router``, with ``session``'s cache when given.
    ``background``: a Job at once, listed by ``%llm jobs`` (``var``: the variable it is
    bound to), its Evaluation ``timmy_magic.last()`` once done."""
    try:
        job = evals.plan_eval(router, rows, prompt, targets, score, system=system,
                              schema=schema, concurrency=concurrency,
                              max_tokens=max_tokens, temperature=temperature)
    except MapError as exc:  # the rows themselves
        raise EvalError(str(exc).replace("map:", "evaluate:", 1)) from None
    if export is not None and results is not None:
        raise EvalError("evaluate: export= writes the requests, results= reads the answers: "
                        "pass one of them")
    if export is not None:
        return evals.export_eval(router, job, Path(export))
    answers = None
    if session is not None:
        answers = SessionAnswers(session.answers, "json" if job.jobs[0].schema else
                                  "markdown", cache)

    def shown(phase: str) -> Any:
        return make_progress(phase) if progress else None

    if background and results is None:
        handle = evals.start_eval(router, job, cache=answers, progress=shown("evaluate"))
        handle.var = var
        if session is not None:
            handle.cell = getattr(session.shell, "execution_count", None)
            session.jobs.add(handle)
            handle.add_done_callback(lambda done: _keep(session, done))
        return handle
    if results is not None:
        result = evals.read_results(router, job, Path(results), cache=answers,
                                    progress=shown)
    else:
        result = evals.run_eval(router, job, cache=answers, progress=shown)
    if session is not None:
        session.last_result = result
    if result.interrupted:
        done = sum(a.result.ok for a in result.answers)
        raise EvalInterrupted(f"interrupted: {done} of {len(result.answers)} answers kept: "
                              "timmy_magic.last()", result)
    return result


def _keep(session: Session, job: Job[Evaluation]) -> None:
    """A background evaluation becomes ``timmy_magic.last()`` once it settled."""
    if job.exception() is None:
        session.last_result = job.result()


class SessionAnswers:
    """The session's answer cache as ``batch.RowCache``: the mode in force with the call's
    ``cache`` flag, each request keyed as a cell keys it (``fmt``: json with a schema)."""

    def __init__(self, answers: CellCache, fmt: str, flag: bool | None) -> None:
        self.answers, self.fmt, self.flag = answers, fmt, flag

    def lookup(self, req: ChatRequest) -> Result | None:
        fields, mode = self.answers.fields(req, self.fmt, self.flag)
        return self.answers.lookup(fields, mode, req.schema)

    def record(self, req: ChatRequest, result: Result) -> None:
        fields, mode = self.answers.fields(req, self.fmt, self.flag)
        self.answers.record(fields, result, mode)
