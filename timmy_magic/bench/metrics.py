"""Serving-benchmark metrics from per-request timelines. Pure: no I/O, no clock.

The definitions are those of vLLM's serving benchmark (``benchmarks/benchmark_serving.py``,
``calculate_metrics``), which vllm-mlx's ``bench_serve`` also reports, measured on the client:

- TTFT: first content chunk - request start.
- E2E latency: end of the stream - request start.
- TPOT: (E2E - TTFT) / (output tokens - 1); only for requests with more than one output
  token (a one-token answer has no decode phase).
- ITL: every gap between two consecutive content chunks, pooled over all requests (not
  averaged per request first). Servers usually send one token per chunk, so ITL is the
  per-token gap; a server that batches tokens into chunks shows fewer, longer gaps.
- Request throughput: completed requests / wall duration of the run.
- Output token throughput: output tokens of completed requests / duration.
- Total token throughput: (input + output tokens of completed requests) / duration.
- Each distribution: mean, median (p50), p95, p99, by linear interpolation (numpy's default).

Only completed requests enter the statistics (as in vLLM), but every request is counted:
``errors`` (no answer), ``incomplete`` (the stream broke after its first token) and
``cancelled`` (an interrupt stopped it) are reported next to ``completed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from timmy_magic.routing.metrics import percentile

Status = Literal["ok", "incomplete", "error", "cancelled"]
QUANTILES = ("mean", "p50", "p95", "p99")
DISTRIBUTIONS = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True, slots=True)
class Timeline:
    """One request as the client saw it. Times are seconds on one monotonic clock.

    ``chunks`` holds the arrival time of every content chunk; ``end`` the arrival of the end
    of the stream (or of the error). Token counts come from the server's usage, or were
    estimated on the client when ``estimated`` is set.
    """

    start: float
    chunks: tuple[float, ...] = ()
    end: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    status: Status = "ok"
    error: str | None = None
    attempts: int = 1
    model: str | None = None

    @property
    def completed(self) -> bool:
        return self.status == "ok" and self.end is not None

    @property
    def ttft(self) -> float | None:
        return self.chunks[0] - self.start if self.chunks else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.start if self.end is not None else None

    @property
    def itls(self) -> list[float]:
        c = self.chunks
        return [c[i] - c[i - 1] for i in range(1, len(c))]

    @property
    def tpot(self) -> float | None:
        ttft, e2e = self.ttft, self.e2e
        if ttft is None or e2e is None or self.output_tokens <= 1:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class Dist:
    """Mean, median, p95 and p99 of a list of durations, in milliseconds (None: no data)."""

    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Dist:
        if not values:
            return cls()
        ms = [v * 1000.0 for v in values]
        return cls(sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 95),
                   percentile(ms, 99))


@dataclass(frozen=True, slots=True)
class Summary:
    """The statistics of one run (one provider at one concurrency level)."""

    requests: int
    completed: int
    incomplete: int
    errors: int
    cancelled: int
    retries: int
    duration_s: float
    input_tokens: int
    output_tokens: int
    chunks: int
    tokens_estimated: bool
    ttft: Dist
    tpot: Dist
    itl: Dist
    e2e: Dist
    requests_per_s: float | None
    output_tok_s: float | None
    total_tok_s: float | None
    model: str | None
    first_error: str | None

    def fields(self) -> dict[str, Any]:
        """Flat ``name: value`` pairs (``ttft_ms_p50``, ``output_tok_s``, ...)."""
        out: dict[str, Any] = {
            "requests": self.requests, "completed": self.completed,
            "incomplete": self.incomplete, "errors": self.errors,
            "cancelled": self.cancelled, "retries": self.retries,
        }
        for name in DISTRIBUTIONS:
            dist: Dist = getattr(self, name)
            for q in QUANTILES:
                out[f"{name}_ms_{q}"] = getattr(dist, q)
        out.update(requests_per_s=self.requests_per_s, output_tok_s=self.output_tok_s,
                   total_tok_s=self.total_tok_s, input_tokens=self.input_tokens,
                   output_tokens=self.output_tokens, chunks=self.chunks,
                   tokens_estimated=self.tokens_estimated, duration_s=self.duration_s,
                   first_error=self.first_error)
        return out


def span(timelines: Sequence[Timeline]) -> float:
    """First start to last end: the run's duration when no wall clock was kept."""
    ends = [t.end for t in timelines if t.end is not None]
    if not ends:
        return 0.0
    return max(ends) - min(t.start for t in timelines)


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of ``(begin, end)`` intervals open at one instant (an interval
    ending exactly when another begins does not overlap it)."""
    edges = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def peak_streams(timelines: Sequence[Timeline]) -> int:
    """How many requests were receiving content at once: first chunk to end of stream."""
    return max_overlap([(t.chunks[0], t.end) for t in timelines
                        if t.chunks and t.end is not None])


def _rate(amount: float, duration_s: float) -> float | None:
    return amount / duration_s if duration_s > 0 else None


def _most_common(values: Sequence[str | None]) -> str | None:
    named = [v for v in values if v]
    return Counter(named).most_common(1)[0][0] if named else None


def timeline_stats(timelines: Sequence[Timeline], duration_s: float | None = None) -> Summary:
    """Statistics over ``timelines``; ``duration_s`` is the run's wall time (default: the
    span of the timelines). vLLM's ``calculate_metrics``, with every failure counted."""
    done = [t for t in timelines if t.completed]
    dur = span(timelines) if duration_s is None else duration_s
    ttfts = [v for t in done if (v := t.ttft) is not None]
    e2es = [v for t in done if (v := t.e2e) is not None]
    tpots = [v for t in done if (v := t.tpot) is not None]
    itls = [gap for t in done for gap in t.itls]
    input_tokens = sum(t.input_tokens for t in done)
    output_tokens = sum(t.output_tokens for t in done)
    by_status = Counter(t.status for t in timelines)
    errors = [t.error for t in timelines if t.error]
    return Summary(
        requests=len(timelines), completed=len(done),
        incomplete=by_status["incomplete"], errors=by_status["error"],
        cancelled=by_status["cancelled"],
        retries=sum(max(0, t.attempts - 1) for t in timelines),
        duration_s=dur, input_tokens=input_tokens, output_tokens=output_tokens,
        chunks=sum(len(t.chunks) for t in done),
        tokens_estimated=any(t.estimated for t in done),
        ttft=Dist.of_seconds(ttfts), tpot=Dist.of_seconds(tpots),
        itl=Dist.of_seconds(itls), e2e=Dist.of_seconds(e2es),
        requests_per_s=_rate(len(done), dur), output_tok_s=_rate(output_tokens, dur),
        total_tok_s=_rate(input_tokens + output_tokens, dur),
        model=_most_common([t.model for t in timelines]),
        first_error=errors[0] if errors else None)
