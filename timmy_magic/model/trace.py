"""The route trace: which providers were considered, skipped (and why), tried (and how
it went). Imported by ``errors`` (a routing error carries its trace) and ``types``; it
imports neither, so there is no cycle between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SkipReason = Literal[
    "pinned_elsewhere", "disabled", "not_configured", "not_installed", "circuit_open",
    "cloud_gate", "unhealthy", "misconfigured", "no_model", "stopped",
    "no_vision", "context_window", "no_tools", "completion_model",
]


@dataclass(frozen=True, slots=True)
class Skip:
    provider: str
    reason: SkipReason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.provider} skipped ({self.reason.replace('_', ' ')}"\
            f"{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    endpoint: str
    number: int
    outcome: Literal["answered", "failed", "broken", "invalid"]
    """``invalid``: it answered, but not as the request's schema asks (``error`` says how)."""
    error: str | None = None
    elapsed_s: float = 0.0
    refused: bool = False
    """It failed because nothing accepted the connection (``errors.ConnectionRefused``)."""

    def __str__(self) -> str:
        tag = f"{self.provider}#{self.number}"
        if self.outcome == "answered":
            return f"{tag} answered ({self.elapsed_s:.2f}s)"
        if self.outcome == "invalid":
            return f"{tag} answered, {self.error}"
        return f"{tag} {self.outcome}: {self.error}"


@dataclass(frozen=True, slots=True)
class RouteTrace:
    """Providers considered, skipped (and why), tried, failed (and why), and who answered."""

    considered: tuple[str, ...] = ()
    skipped: tuple[Skip, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    pinned: str | None = None

    @property
    def answered_by(self) -> str | None:
        for a in self.attempts:
            if a.outcome in ("answered", "broken"):
                return a.provider
        return None

    def lines(self) -> list[str]:
        out = [f"considered: {', '.join(self.considered) or '(none)'}"
               + (f"  [pinned: {self.pinned}]" if self.pinned else "")]
        elsewhere = [s.provider for s in self.skipped if s.reason == "pinned_elsewhere"]
        if elsewhere:  # one line for all of them: the pin is the one reason
            out.append(f"skipped (pinned to {self.pinned}): {', '.join(elsewhere)}")
        out += [str(s) for s in self.skipped if s.reason != "pinned_elsewhere"]
        out += [str(a) for a in self.attempts]
        return out

    def __str__(self) -> str:
        return " | ".join(self.lines())
