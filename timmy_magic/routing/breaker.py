"""Circuit breaker: a pure state machine, the time passed in by the caller.

closed --(failure_threshold consecutive failures)--> open
open --(recovery_timeout elapsed)--> half_open (at most half_open_max_calls probes in flight)
half_open --(a probe succeeds)--> closed;  half_open --(a probe fails)--> open (timer restarts)

There is no other way to be skipped: every open circuit becomes half-open by itself, so a
provider can never stay excluded until a manual reset.

Callers never pair acquire/release/record by hand: ``permit(now)`` hands out a ``Permit``
that owns the outcome of the one call it admits and is settled exactly once (success,
failure, or given back), by its owner in a ``finally`` (as pybreaker's ``calling()`` and
asyncio's Semaphore). A cancelled or crashed call therefore cannot leak a half-open slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from timmy_magic.model.chat import CircuitState


@dataclass
class CircuitBreaker:
    failure_threshold: int = 3
    recovery_timeout: float = 30.0
    half_open_max_calls: int = 1

    consecutive_failures: int = 0
    opened_at: float | None = None
    half_open_in_flight: int = 0
    times_opened: int = 0

    def state(self, now: float) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.recovery_timeout:
            return "half_open"
        return "open"

    def retry_in(self, now: float) -> float:
        """Seconds until an open circuit turns half-open (0 when not open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.recovery_timeout - now)

    def available(self, now: float) -> bool:
        """Would ``acquire`` succeed now? (No side effect: for planning.)"""
        st = self.state(now)
        return st == "closed" or (st == "half_open"
                                  and self.half_open_in_flight < self.half_open_max_calls)

    def acquire(self, now: float) -> bool:
        """Take permission for one call; in half-open this takes one of the probe slots."""
        if not self.available(now):
            return False
        if self.state(now) == "half_open":
            self.half_open_in_flight += 1
        return True

    def release(self, now: float, probe: bool = True) -> None:
        """Give back a slot taken by ``acquire`` for a call that was neither a success nor
        a failure of the server (cancelled by the user, or a 4xx about the request).

        ``probe``: the call was granted while half-open, so it holds a probe slot. A call
        granted while closed holds none: when it ends late (a long stream that began before
        the circuit opened), it must not free a probe's slot, or more than
        ``half_open_max_calls`` probes could be in flight."""
        if probe and self.opened_at is not None and self.half_open_in_flight:
            self.half_open_in_flight -= 1

    def record_success(self, now: float) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.half_open_in_flight = 0

    def record_failure(self, now: float, probe: bool = True) -> None:
        """Count a failure of the server; ``probe`` as for ``release``."""
        self.consecutive_failures += 1
        if self.opened_at is not None:
            if probe and self.half_open_in_flight:  # a probe failed: open again, timer restarts
                self.half_open_in_flight -= 1
                self.opened_at = now
                self.times_opened += 1
            return
        if self.consecutive_failures >= self.failure_threshold:
            self.opened_at = now
            self.half_open_in_flight = 0
            self.times_opened += 1

    def permit(self, now: float) -> Permit | None:
        """Admission for one call, or None when the circuit refuses it now."""
        probe = self.state(now) == "half_open"
        return Permit(self, probe) if self.acquire(now) else None


class Permit:
    """The admission of one call by a breaker, settled exactly once: later settlements
    are ignored, so a ``finally: permit.release(now)`` after a recorded outcome is safe."""

    __slots__ = ("breaker", "outcome", "probe")

    def __init__(self, breaker: CircuitBreaker, probe: bool) -> None:
        self.breaker, self.probe = breaker, probe
        self.outcome: str | None = None

    def _settle(self, outcome: str) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        return True

    def success(self, now: float) -> None:
        if self._settle("success"):
            self.breaker.record_success(now)

    def failure(self, now: float) -> None:
        """The server failed this call (counts towards opening the circuit)."""
        if self._settle("failure"):
            self.breaker.record_failure(now, self.probe)

    def release(self, now: float) -> None:
        """Neither success nor failure of the server (cancelled, a failure about the
        request or its model: ``RetryPolicy.counts``, a launch that failed): give the
        slot back."""
        if self._settle("released"):
            self.breaker.release(now, self.probe)
