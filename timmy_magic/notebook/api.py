"""``timmy_magic.map`` as a notebook calls it: the batch feature (``timmy_magic.batch``)
given the loaded extension's router and answer cache, its progress shown where the code
runs (``notebook.progress``), its result kept as ``timmy_magic.last()``.

Plain Python works the same with ``router=`` and no extension loaded (no cache, the
progress as one terminal line).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy_magic import batch
from timmy_magic.batch import MapError, MapInterrupted
from timmy_magic.notebook.display.progress import make_progress
from timmy_magic.notebook.extension import session as current_session

if TYPE_CHECKING:
    from timmy_magic.batch import MapResult
    from timmy_magic.jobs import Job
    from timmy_magic.model.chat import ChatRequest, Result
    from timmy_magic.notebook.cached import CellCache
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
        answers = _SessionAnswers(session.answers, "json" if job.schema else "markdown",
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


def _keep(session: Session, job: Job[MapResult]) -> None:
    """A background map's rows become ``timmy_magic.last()`` once it settled."""
    if job.exception() is None:
        session.last_result = job.result()


def _surface(router: Router | None) -> tuple[Session | None, Router]:
    """(the shell's session, when the map runs on its router; the router to use)."""
    try:
        session = current_session()
    except RuntimeError:
        session = None
    if router is not None:
        return (session if session is not None and session.router is router else None), router
    if session is None:
        raise MapError("map: no router: run %load_ext timmy_magic first, or pass "
                       "router=Router.from_config()")
    return session, session.router


class _SessionAnswers:
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
