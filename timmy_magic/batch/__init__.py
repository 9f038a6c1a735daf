"""One prompt template over many rows, through the cascade (``timmy_magic.map``).

    from timmy_magic import Router, batch

    with Router.from_config() as router:
        job = batch.plan("Classify: {review}", df, schema=Label, concurrency=8)
        res = batch.run(router, job)
    res.to_pandas()

Each row fills the template (``{column}`` from the row, or ``{row[...]}``, escape-safe as
in ``%%llm``) and becomes one request (``rows``); at most ``concurrency`` are in flight on
the router's loop (``runner``). A failed row is kept as an error and never stops the others;
Ctrl-C returns the finished rows. The answer cache (``RowCache``) and the progress display
(``timmy_magic.model.progress.Progress``) are passed in: this package knows no notebook
(``timmy_magic.map`` in ``timmy_magic.notebook.api`` finds the session's).

Bigger than one kernel: ``export`` writes the requests as OpenAI batch JSONL (what vLLM's
``run-batch`` and the OpenAI Batch API read) and sends nothing; ``map_results(path)``
reads their output back into a ``MapResult`` (``files``).
"""

from __future__ import annotations

from timmy_magic.batch.files import MAX_BATCH_ROWS, BatchFile, batch_body, export, map_results
from timmy_magic.batch.rows import (
    PREVIEW_ROWS,
    MapError,
    MapInterrupted,
    MapJob,
    MapResult,
    RowError,
    failed,
    namespace,
    plan,
)
from timmy_magic.batch.runner import (
    CLEANUP_S,
    NOT_RUN,
    PROGRESS_EVERY,
    Ask,
    RowCache,
    aask_all,
    ask_all,
    plan_asks,
    prepare,
    progress_line,
    run,
    start,
)

__all__ = [
    "CLEANUP_S",
    "MAX_BATCH_ROWS",
    "NOT_RUN",
    "PREVIEW_ROWS",
    "PROGRESS_EVERY",
    "Ask",
    "BatchFile",
    "MapError",
    "MapInterrupted",
    "MapJob",
    "MapResult",
    "RowCache",
    "RowError",
    "aask_all",
    "ask_all",
    "batch_body",
    "export",
    "failed",
    "map_results",
    "namespace",
    "plan",
    "plan_asks",
    "prepare",
    "progress_line",
    "run",
    "start",
]
