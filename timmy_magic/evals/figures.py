"""The figures of one target over its rows: pure arithmetic over the answers, no I/O.

``score_mean`` averages every row that was asked, a row with no answer scoring 0 (a
provider that fails half the rows is not good on them); a row whose score itself failed
(the judge could not grade it, the scoring function raised) is left out of it. The 95%
interval is Wilson's for scores that are all 0 or 1 (exact, contains, regex, json) and
the normal one (mean ± 1.96 standard errors, within [0, 1]) otherwise. Latency and
tokens/s are over the answered rows; percentiles as the benchmark takes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from timmy_magic.routing.metrics import percentile

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Figures:
    """One target's line of the summary."""

    target: str
    rows: int
    errors: int
    score_mean: float | None
    score_low: float | None
    score_high: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    tokens_per_s: float | None
    cost_usd: float
    judge_cost_usd: float = 0.0

    @property
    def cost_per_1k_rows(self) -> float | None:
        return self.cost_usd / self.rows * 1000 if self.rows else None

    def fields(self) -> dict[str, Any]:
        """The summary's columns, in order (``target`` is the index)."""
        return {"score_mean": self.score_mean, "score_low": self.score_low,
                "score_high": self.score_high, "rows": self.rows, "errors": self.errors,
                "latency_p50_s": self.latency_p50_s, "latency_p95_s": self.latency_p95_s,
                "tokens_per_s": self.tokens_per_s, "cost_usd": self.cost_usd,
                "cost_per_1k_rows": self.cost_per_1k_rows,
                "judge_cost_usd": self.judge_cost_usd}


def interval(scores: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean and its 95% interval (see the module's doc)."""
    n = len(scores)
    if not n:
        return None, None, None
    mean = sum(scores) / n
    if all(s in (0.0, 1.0) for s in scores):  # Wilson's score interval for a proportion
        z2 = Z95 * Z95
        centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return mean, max(0.0, centre - half), min(1.0, centre + half)
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def figures(target: str, rows: int, errors: int, scores: Sequence[float],
            latencies: Sequence[float], rates: Sequence[float], cost_usd: float,
            judge_cost_usd: float = 0.0, scored: bool = True) -> Figures:
    """The figures of one target: ``scores`` of the rows scored (0 for a row with no
    answer), ``latencies`` and ``rates`` (tokens/s) of the answered rows."""
    mean, low, high = interval(scores) if scored else (None, None, None)
    return Figures(target, rows, errors, mean, low, high, percentile(latencies, 50),
                   percentile(latencies, 95), percentile(rates, 50), cost_usd,
                   judge_cost_usd)


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the points no other point beats (an ``x`` as low or lower and a
    ``y`` as high or higher, one of them strictly), by ``x``: lower cost or latency,
    higher score."""
    best = []
    for i, (x, y) in enumerate(points):
        beaten = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y)
                     for j, (x2, y2) in enumerate(points) if j != i)
        if not beaten:
            best.append(i)
    return sorted(best, key=lambda i: points[i])


def score_text(f: Figures) -> str:
    """``0.80 [0.49, 0.94]`` (or ``-`` when nothing was scored)."""
    if f.score_mean is None:
        return "-"
    if f.score_low is None or f.score_high is None:
        return f"{f.score_mean:.2f}"
    return f"{f.score_mean:.2f} [{f.score_low:.2f}, {f.score_high:.2f}]"
