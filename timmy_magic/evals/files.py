"""An evaluation past one machine: ``export`` writes each target's requests as OpenAI
batch JSONL (as ``map(export=...)`` does: one file per target, since a batch runs on one
model) with a manifest, and sends nothing; ``read_results`` reads the output files back
into the same ``Evaluation`` a live run gives (scored alike; no latency, since a batch
measures none).

    DIR/evaluation.json                 the targets and their files
    DIR/<target>.jsonl                  the requests: vllm run-batch -i ... / OpenAI Batch
    DIR/<target>.results.jsonl          where their output is expected
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from timmy_magic.batch import BatchFile, MapError, export, failed, map_results
from timmy_magic.evals.run import EvalJob, ProgressFor, collect
from timmy_magic.evals.targets import EvalError, Target
from timmy_magic.text.markup import count

if TYPE_CHECKING:
    from timmy_magic.batch import RowCache
    from timmy_magic.evals.evaluation import Evaluation
    from timmy_magic.model.chat import Result
    from timmy_magic.routing.router import Router

MANIFEST = "evaluation.json"


def file_stem(target: Target) -> str:
    """A target's label as a file name: anything but letters, digits, ``.-_`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", target.label).strip("._") or "target"


@dataclass(frozen=True)
class EvalExport:
    """The batch files of an evaluation, one per target, and where their output goes."""

    directory: Path
    files: tuple[tuple[Target, BatchFile], ...]

    def __repr__(self) -> str:
        lines = [f"<EvalExport {self.directory}: {count(len(self.files), 'target')}"]
        for t, f in self.files:
            skipped = f", {count(len(f.skipped), 'row')} skipped" if f.skipped else ""
            lines.append(f"  {t.label}: {f.path.name} ({count(f.rows, 'request')} for "
                         f"{f.model}{skipped}) -> {file_stem(t)}.results.jsonl")
        lines.append("Run each (vllm run-batch -i F -o F.results.jsonl, or the OpenAI Batch "
                     "API), then evaluate(..., results=DIR)>")
        return "\n".join(lines)


def export_eval(router: Router, job: EvalJob, directory: Path) -> EvalExport:
    """Write every target's requests under ``directory`` and the manifest; send nothing."""
    files = []
    for t, map_job in zip(job.targets, job.jobs):
        try:
            written = export(router, map_job, directory / f"{file_stem(t)}.jsonl")
        except MapError as exc:
            raise EvalError(f"evaluate: export {t.label}: "
                            f"{str(exc).removeprefix('map: ')}") from None
        files.append((t, written))
    manifest = {"targets": [{"target": t.label, "provider": t.provider, "model": t.model,
                             "requests": f.path.name,
                             "results": f"{file_stem(t)}.results.jsonl"}
                            for t, f in files]}
    try:
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        raise EvalError(f"evaluate: cannot write {directory / MANIFEST}: "
                        f"{exc.strerror or exc}") from None
    return EvalExport(directory, tuple(files))


def read_results(router: Router | None, job: EvalJob, directory: Path, *,
                 cache: RowCache | None = None,
                 progress: ProgressFor | None = None) -> Evaluation:
    """The Evaluation of the batch output files under ``directory`` (each target's
    ``<target>.results.jsonl``; a target with no file has every row an error)."""
    if not directory.is_dir():
        raise EvalError(f"evaluate: results={str(directory)!r} is not a folder (the one "
                        f"export= wrote)")
    per_target: list[list[Result]] = []
    n = len(job.items)
    for t in job.targets:
        path = directory / f"{file_stem(t)}.results.jsonl"
        if not path.exists():
            per_target.append([failed(f"no results file {path.name}")] * n)
            continue
        try:
            got = map_results(path, job.items, schema=job.jobs[0].schema)
        except MapError as exc:
            raise EvalError(f"evaluate: {t.label}: {exc}") from None
        per_target.append([_as_target(r, t) for r in got.results])
    results = [per_target[k][i] for i in range(n) for k in range(len(job.targets))]
    return collect(router, job, results, job.asks(), cache=cache, progress=progress)


def _as_target(res: Result, t: Target) -> Result:
    """A batch answer named for the target that was asked (a file knows no provider)."""
    return replace(res, provider=t.provider, model=res.model or t.model) if res.ok else res
