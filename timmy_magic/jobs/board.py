"""The jobs of one session: numbered as they start, found by number or variable name,
listed as rows (``%llm jobs``), cancelled one by one or all at once (``%llm cancel``,
``%unload_ext``, kernel shutdown). Pure bookkeeping: the jobs do their own I/O."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from timmy_magic.jobs.job import Job
from timmy_magic.model.errors import TimmyError
from timmy_magic.text.markup import shorten

JOB_COLUMNS = ("job", "cell", "kind", "provider", "state", "tokens", "elapsed", "prompt")


class UnknownJob(TimmyError):
    """``%llm cancel`` names no job of this session."""


class JobBoard:
    def __init__(self) -> None:
        self._jobs: list[Job[Any]] = []
        self._by_source: dict[str, Job[Any]] = {}

    def add(self, job: Job[Any], source: str | None = None) -> Job[Any]:
        """Number ``job`` and list it. ``source`` (a cell's id): a job still running from
        the same source is cancelled, the new one replacing it."""
        job.id = len(self._jobs) + 1
        self._jobs.append(job)
        if source is not None:
            old = self._by_source.get(source)
            if old is not None and old is not job:
                old.cancel()
            self._by_source[source] = job
        return job

    def __iter__(self) -> Iterator[Job[Any]]:
        return iter(list(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)

    def running(self) -> list[Job[Any]]:
        return [j for j in self._jobs if not j.done()]

    def find(self, ref: str) -> list[Job[Any]]:
        """``all`` (every unfinished job), a job number (``3``, ``#3``) or the variable a
        job was bound to (the latest such job); UnknownJob naming what there is."""
        ref = ref.strip()
        if ref == "all":
            return self.running()
        number = ref.lstrip("#")
        if number.isdigit():
            hits = [j for j in self._jobs if j.id == int(number)]
        else:
            hits = [j for j in self._jobs if j.var == ref][-1:]
        if not hits:
            known = ", ".join(f"{j.id}" + (f" ({j.var})" if j.var else "")
                              for j in self._jobs) or "none yet"
            raise UnknownJob(f"no job {ref!r} in this session (jobs: {known})")
        return hits

    def cancel_all(self, wait: float = 2.0) -> int:
        """Cancel every unfinished job and wait (up to ``wait`` s in all) for them to
        settle, so their streams are closed; how many were cancelled."""
        live = [j for j in self.running() if j.cancel()]
        deadline = time.monotonic() + wait
        for job in live:
            job.wait(max(deadline - time.monotonic(), 0.0))
        return len(live)

    def rows(self, now: float | None = None) -> list[tuple[str, ...]]:
        """One row of raw texts per job, in ``JOB_COLUMNS`` order."""
        now = time.monotonic() if now is None else now
        return [(str(j.id) + (f" ({j.var})" if j.var else ""),
                 "" if j.cell is None else f"[{j.cell}]", j.kind,
                 j.progress.provider or "", j.status, str(j.progress.tokens),
                 f"{j.elapsed(now):.1f}s", shorten(j.label, 40)) for j in self._jobs]
