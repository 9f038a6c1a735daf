"""Inline serving benchmarks: ``%llm bench`` and ``timmy_magic.bench.run``.

    from timmy_magic import Router
    from timmy_magic import bench

    with Router.from_config() as router:
        result = bench.run(router, providers=["llama-server", "vllm-mlx"],
                           concurrency=(1, 4, 16), n=32, max_tokens=64)
    result.records        # one dict per provider x concurrency
    result.to_csv("bench.csv")

Metric definitions: see ``timmy_magic.bench.metrics`` (vLLM's benchmark_serving).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from timmy_magic.bench.metrics import Dist, Summary, Timeline, timeline_stats
from timmy_magic.bench.progress import ProgressMode, pick_progress
from timmy_magic.bench.report import BenchResult
from timmy_magic.bench.runner import (
    DEFAULT_PROMPT,
    BenchSettings,
    NothingToBench,
    choose_providers,
    execute,
)

if TYPE_CHECKING:
    from timmy_magic.model.progress import Progress
    from timmy_magic.routing.router import Router

__all__ = [
    "DEFAULT_PROMPT",
    "BenchResult",
    "BenchSettings",
    "Dist",
    "NothingToBench",
    "Summary",
    "Timeline",
    "run",
    "timeline_stats",
]


def run(router: Router, providers: Sequence[str] | str | None = None,
        concurrency: Sequence[int] | int = (1,), n: int = 8, max_tokens: int = 64,
        prompts: Sequence[str] | str | None = None, warmup: int = 1,
        model: str | None = None, temperature: float | None = None,
        progress: ProgressMode | bool | Progress | None = "auto") -> BenchResult:
    """Benchmark ``providers`` (default: every healthy one) at each concurrency level.

    Each level sends ``max(n, concurrency)`` requests, closed-loop; ``warmup`` requests per
    provider run first and are reported apart (``result.warmup``). Ctrl-C / a kernel
    interrupt stops the run and returns what finished (``result.interrupted``).

    ``progress``: a display (``timmy_magic.model.progress.Progress``; in a notebook,
    ``timmy_magic.notebook.display.progress.make_progress("bench")`` draws a bar), or "auto" (a
    terminal line when stderr is a terminal, else nothing), "text", "none" / False / None.
    """
    display = pick_progress(progress)  # a bad mode fails before any request
    names = [providers] if isinstance(providers, str) else providers
    chosen, notes = choose_providers(router, names)
    levels = (concurrency,) if isinstance(concurrency, int) else tuple(concurrency)
    texts = (prompts,) if isinstance(prompts, str) else tuple(prompts or (DEFAULT_PROMPT,))
    settings = BenchSettings(tuple(chosen), levels, n, max_tokens, texts, warmup, model,
                             temperature)
    return execute(router, settings, display, notes)
