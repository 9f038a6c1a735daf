"""The cloud gate ("metabolic protocol"): when cloud providers may be used.

Pure decision (`decide`) plus two small stateful helpers: the daily spend ledger and the
quota signal (a callable or a command whose answer names a tier). Local providers are never
gated: the router only asks about cloud ones.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import math
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from timmy_magic.privacy.redact import get_logger

Tier = Literal["burst", "active", "resting"]
TIERS: tuple[Tier, ...] = ("burst", "active", "resting")
log = get_logger("timmy_magic.routing.gate")


def money(usd: float) -> str:
    """An amount of dollars, one format everywhere (status, panel, gate): cents
    ("$0.00", "$5.00", "$0.05"), and four decimals only for a non-zero amount under a cent
    ("$0.0004"), which cents would show as nothing."""
    if not math.isfinite(usd):
        return f"${usd}"
    return f"${usd:.4f}" if 0 < abs(usd) < 0.005 else f"${usd:.2f}"


@dataclass(frozen=True, slots=True)
class GateDecision:
    open: bool
    reason: str = ""


def decide(*, local_only: bool, spent_usd: float, budget_usd: float | None,
           tier: Tier | None, closed_tiers: tuple[str, ...] = ("resting",)) -> GateDecision:
    """May a cloud provider be used now?"""
    if local_only:
        return GateDecision(False, "local-only mode")
    if budget_usd is not None and not (spent_usd < budget_usd):  # NaN spent: closed
        return GateDecision(False, f"daily budget spent ({money(spent_usd)} of {money(budget_usd)})")
    if tier is not None and tier in closed_tiers:
        return GateDecision(False, f"quota tier '{tier}'")
    return GateDecision(True)


class SpendLedger:
    """USD spent per local calendar day, from the usage the servers actually returned."""

    def __init__(self, today: Callable[[], _dt.date] = _dt.date.today) -> None:
        self._today = today
        self._day = today()
        self._spent = 0.0
        self._lock = threading.Lock()

    def add(self, usd: float) -> None:
        """Count ``usd`` spent now. Only a finite, non-negative amount is accepted: one
        NaN would make every later comparison with the budget false (gate open)."""
        if not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
            raise ValueError(f"not an amount of money: {usd!r}")
        with self._lock:
            self._roll()
            self._spent += usd

    @property
    def spent_today(self) -> float:
        with self._lock:
            self._roll()
            return self._spent

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:
            self._day, self._spent = day, 0.0


def cost_usd(input_tokens: int | None, output_tokens: int | None,
             price_in_per_1k: float, price_out_per_1k: float) -> float:
    return ((input_tokens or 0) * price_in_per_1k + (output_tokens or 0) * price_out_per_1k) / 1000


class QuotaSignal:
    """Reads the current tier from a callable (``"pkg.mod:func"``) or a command, cached for
    ``ttl`` seconds. A signal that fails or answers nonsense gives None (no opinion) and logs
    why: a broken quota script must not take the cloud away silently, nor crash routing."""

    def __init__(self, *, command: list[str] | None = None, callable_path: str | None = None,
                 func: Callable[[], str] | None = None, ttl: float = 60.0,
                 timeout: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._command, self._callable_path, self._func = command, callable_path, func
        self._ttl, self._timeout, self._clock = ttl, timeout, clock
        self._cached: tuple[float, Tier | None] | None = None
        self.last_error: str | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    def stale(self) -> bool:
        """Is a new reading due (never read, or older than ``ttl``)?"""
        return self._cached is None or self._clock() - self._cached[0] >= self._ttl

    def cached(self) -> Tier | None:
        """The last reading, without I/O (None before the first)."""
        return self._cached[1] if self._cached else None

    def tier(self) -> Tier | None:
        """The tier, read now if stale. Blocking (a command, user code): call it off the
        event loop."""
        if not self.stale():
            return self.cached()
        value = self._read()
        self._cached = (self._clock(), value)
        return value

    def _read(self) -> Tier | None:
        try:
            raw = self._raw()
        except Exception as exc:  # any failure of user code means "no opinion"  # noqa: BLE001
            self.last_error = f"quota signal failed: {type(exc).__name__}: {exc}"
            log.warning(self.last_error)
            return None
        word = (raw or "").strip().lower()
        if word not in TIERS:
            self.last_error = f"quota signal answered {word!r}, expected one of {TIERS}"
            log.warning(self.last_error)
            return None
        self.last_error = None
        return word  # type: ignore[return-value,unused-ignore]

    def _raw(self) -> str:
        if self._func is not None:
            return str(self._func())
        if self._callable_path:
            mod, _, attr = self._callable_path.partition(":")
            return str(getattr(importlib.import_module(mod), attr)())
        if self._command:
            done = subprocess.run(self._command, capture_output=True, text=True,
                                  timeout=self._timeout, check=True)
            return done.stdout
        return ""
