"""Per-provider request metrics. Updated on the router's loop, read from any thread."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no data."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    requests: int
    successes: int
    failures: int
    cancelled: int
    in_flight: int
    consecutive_failures: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None
    output_tok_s: float | None
    cost_usd: float
    circuit: str = "closed"

    @property
    def error_rate(self) -> float:
        done = self.successes + self.failures
        return self.failures / done if done else 0.0


class ProviderMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.successes = self.failures = self.cancelled = 0
        self.consecutive_failures = 0
        self.cost_usd = 0.0
        self._latency: deque[float] = deque(maxlen=WINDOW)
        self._ttft: deque[float] = deque(maxlen=WINDOW)
        self._tok_s: deque[float] = deque(maxlen=WINDOW)

    def started(self) -> None:
        with self._lock:
            self.requests += 1

    def succeeded(self, total_s: float, ttft_s: float | None, tok_s: float | None,
                  cost: float) -> None:
        with self._lock:
            self.successes += 1
            self.consecutive_failures = 0
            self.cost_usd += cost
            self._latency.append(total_s)
            if ttft_s is not None:
                self._ttft.append(ttft_s)
            if tok_s is not None:
                self._tok_s.append(tok_s)

    def failed(self, cost: float = 0.0) -> None:
        with self._lock:
            self.failures += 1
            self.consecutive_failures += 1
            self.cost_usd += cost

    def add_cost(self, usd: float) -> None:
        with self._lock:
            self.cost_usd += usd

    def was_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def snapshot(self, circuit: str = "closed") -> MetricsSnapshot:
        with self._lock:
            lat, ttft, toks = list(self._latency), list(self._ttft), list(self._tok_s)
            done = self.successes + self.failures + self.cancelled
            return MetricsSnapshot(
                requests=self.requests, successes=self.successes, failures=self.failures,
                cancelled=self.cancelled, in_flight=self.requests - done,
                consecutive_failures=self.consecutive_failures,
                latency_p50_s=percentile(lat, 50), latency_p95_s=percentile(lat, 95),
                ttft_p50_s=percentile(ttft, 50), output_tok_s=percentile(toks, 50),
                cost_usd=self.cost_usd, circuit=circuit)
