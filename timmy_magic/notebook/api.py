"""``timmy_magic.map`` and ``timmy_magic.evaluate`` as a notebook calls them: the batch
and evaluation features (``timmy_magic.batch``, ``timmy_magic.evals``) given the loaded
extension's router and answer cache, their progress shown where the code runs
(``notebook.progress``), their result kept as ``timmy_magic.last()``.

Plain Python works the same with ``router=`` and no extension loaded (no cache, the
progress as one terminal line).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy_magic import batch
from timmy_magic.batch import MapError, MapInterrupted
from timmy_magic.evals import EvalError
from timmy_magic.notebook.display.progress import make_progress
from timmy_magic.notebook.extension import session as current_session
from timmy_magic.notebook.runs import SessionAnswers, run_evaluation

if TYPE_CHECKING:
    from timmy_magic.batch import MapResult
    from timmy_magic.jobs import Job
    from timmy_magic.notebook.session import Session
    from timmy_magic.routing.router import Router


def map(template: str, rows: Any, *, schema: Any = None, provider: str | None = None,
        model: str | None = None, concurrency: int = 8, max_tokens: int | None = None,
        system: str | None = None, temperature: float | None = None,
        export: str | Path | None = None, cache: bool | None = None,
        progress: bool = True, router: Router | None = None,
        background: bool = False) -> Any:
    """Ask ``template`` filled from each of ``rows`` (dicts, objects or a DataFrame) and
    return a ``MapResult`` in input order (see ``timmy_magic.batch``). ``schema``: a
    pydantic class or JSON-schema dict each answer must match (``.data``). ``export``:
    write the requests as OpenAI batch JSONL instead and return a ``BatchFile``.
    ``cache``: as ``--cache`` / ``--no-cache`` (None: the session's cache mode); the
    answer cache applies per row, so a re-run sends only the rows not yet answered.
    ``router``: default, the extension's. Ctrl-C raises ``MapInterrupted`` holding the
    finished rows (also ``timmy_magic.last()``). ``background``: return a ``Job`` at once
    (its progress in this cell, ``%llm jobs``, ``%llm cancel``); ``job.result()`` is the
    MapResult, also ``timmy_magic.last()`` once done; a cancel keeps the finished rows."""
    job = batch.plan(template, rows, schema=schema, provider=provider, model=model,
                     concurrency=concurrency, max_tokens=max_tokens, system=system,
                     temperature=temperature)
    if not job.items:
        return job.empty()
    session, router = _surface(router)
    if export is not None:
        return batch.export(router, job, Path(export))
    answers = None
    if session is not None:
        answers = SessionAnswers(session.answers, "json" if job.schema else "markdown",
                                  cache)
    shown = make_progress("map") if progress else None
    if background:
        handle = batch.start(router, job, cache=answers, progress=shown)
        if session is not None:
            handle.cell = getattr(session.shell, "execution_count", None)
            session.jobs.add(handle)
            handle.add_done_callback(lambda done: _keep(session, done))
        return handle
    result = batch.run(router, job, cache=answers, progress=shown)
    if session is not None:
        session.last_result = result
    if result.interrupted:
        raise MapInterrupted(f"interrupted: {sum(r.ok for r in result.results)} of "
                             f"{len(job.items)} rows answered, kept: timmy_magic.last()",
                             result)
    return result


def evaluate(rows: Any, prompt: str, targets: Any, score: Any = None, *,
             system: str | None = None, schema: Any = None, concurrency: int = 8,
             max_tokens: int | None = None, temperature: float | None = None,
             export: str | Path | None = None, results: str | Path | None = None,
             cache: bool | None = None, progress: bool = True,
             router: Router | None = None, background: bool = False) -> Any:
    """Ask ``prompt`` filled from each of ``rows`` of every target (``"provider"``,
    ``"provider:model"``, ``(provider, model)``), score the answers (``"exact:FIELD"``,
    ``"contains:FIELD"``, ``"regex:PATTERN"``, ``"json"``, a function ``(row, result) ->
    float`` in [0, 1], or ``judge("provider[:model]", rubric)``) and return an
    ``Evaluation``: ``.to_pandas()``, ``.summary()``, ``.cascade(min_score=...)`` (see
    ``timmy_magic.evals``). At most ``concurrency`` requests in flight (and a provider's
    ``max_concurrency``). ``export``: write each target's requests as batch JSONL into
    that folder instead (an ``EvalExport``); ``results``: read their output back from it.
    ``cache``: as for ``map``, per (row, target). Ctrl-C raises ``EvalInterrupted``
    holding the finished answers (also ``timmy_magic.last()``). ``background``: return a
    ``Job`` at once, as ``map(..., background=True)`` does (``%llm jobs``, ``%llm
    cancel``); ``job.result()`` is the Evaluation, also ``timmy_magic.last()`` once done;
    a cancel keeps the finished answers."""
    session, router = _surface(router, "evaluate")
    return run_evaluation(session, router, rows, prompt, targets, score, system=system,
                          schema=schema, concurrency=concurrency, max_tokens=max_tokens,
                          temperature=temperature, export=export, results=results,
                          cache=cache, progress=progress, background=background)


def _keep(session: Session, job: Job[MapResult]) -> None:
    """A background map's rows become ``timmy_magic.last()`` once it settled."""
    if job.exception() is None:
        session.last_result = job.result()


def _surface(router: Router | None, name: str = "map") -> tuple[Session | None, Router]:
    """(the shell's session, when the call runs on its router; the router to use)."""
    try:
        session = current_session()
    except RuntimeError:
        session = None
    if router is not None:
        return (session if session is not None and session.router is router else None), router
    if session is None:
        error = EvalError if name == "evaluate" else MapError
        raise error(f"{name}: no router: run %load_ext timmy_magic first, or pass "
                    "router=Router.from_config()")
    return session, session.router
