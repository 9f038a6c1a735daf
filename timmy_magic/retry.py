"""Retry policy: which failures are retried, and how long to wait. Pure; randomness injected."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ProviderError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 30.0

    def backoff(self, retry_number: int, rand: Callable[[], float] = random.random) -> float:
        """Delay before retry ``retry_number`` (1-based): exponential with "equal jitter",
        i.e. uniformly in [d/2, d] where d = min(max_delay, base * 2**(n-1))."""
        d = min(self.max_delay, self.base_delay * (2.0 ** (retry_number - 1)))
        return float(d / 2 + rand() * d / 2)

    def delay_for(self, error: ProviderError, retry_number: int,
                  rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before retrying after ``error``, or None: do not retry this
        provider (not retryable, retries used up, or Retry-After beyond the cap, where
        failing over to the next provider beats waiting)."""
        if not error.retryable or retry_number > self.max_retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.retry_after_cap:
                return None
            return max(0.0, error.retry_after)
        return self.backoff(retry_number, rand)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
