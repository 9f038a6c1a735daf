"""Retry policy: what kind of failure an attempt had, whether it counts against the
endpoint's circuit, whether it is retried, and how long to wait. Pure; randomness injected."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from timmy_magic.model.errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
)

FailureKind = Literal["unreachable", "timeout", "throttled", "server", "protocol", "auth",
                      "request", "model"]
"""What a failed attempt says, and about what:

- of the endpoint: ``unreachable`` (could not connect, or the connection dropped),
  ``timeout``, ``throttled`` (408, 429), ``server`` (5xx, or an error of no known kind),
  ``protocol`` (an answer that could not be understood);
- of the provider's configuration: ``auth`` (401, 403: its key);
- of this request: ``request`` (any other 4xx, a 404 among them: the server read it and
  refused it), and ``model``: the server says the model asked for is not served there
  ("model not found", "does not exist"), or that this request does not fit that model's
  context, whatever status or in-stream error it says it with.
"""

COUNTED: frozenset[FailureKind] = frozenset(
    {"unreachable", "timeout", "throttled", "server", "protocol"})
"""The kinds that count towards opening the endpoint's circuit. The others are about the
request, its model or the key: the endpoint answered, and other requests (another
model) would be served. ``-m a,b,c`` with two models it does not have must not shut
the provider for the next cells. Neither do they count as a success: the
breaker's permit is given back (``Permit.release``)."""

_MODEL = re.compile(
    r"\bmodel\b[^;\n]{0,120}?\b(?:not found|does not exist|doesn't exist|is not served"
    r"|is not supported)"
    r"|\b(?:unknown|invalid|unsupported|no such) model\b|\bmodel_not_found\b"
    r"|\b(?:could not|couldn't|cannot|unable to|failed to) load (?:the )?model\b"
    r"|\bcontext[ _](?:length|window|size)\b|\bmaximum context\b|\bprompt is too long\b",
    re.IGNORECASE)
"""A server's words for "no such model here" (or "it cannot be loaded here") and "too
long for this model's context": vLLM, OpenAI and Groq (``The model `x` does not exist``),
Ollama (``model "x" not found, try pulling it first``), LocalAI (``could not load
model``), llama-server (``the request exceeds the available context size``), OpenAI and
vLLM (``maximum context length is``), Anthropic (``prompt is too long``)."""


def failure_kind(error: ProviderError) -> FailureKind:
    """The kind of a failed attempt (see ``FailureKind``): by the error's class and HTTP
    status, then, for an error the server reported (a status, an in-stream error), by its
    words when they say the model is missing or the request too long for it."""
    if isinstance(error, ProviderConnectError):
        return "unreachable"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderAuthError):
        return "auth"
    said = isinstance(error, ProviderHTTPError | ProviderProtocolError)
    if said and _MODEL.search(str(error)):
        return "model"
    if isinstance(error, ProviderProtocolError):
        return "protocol"
    status = error.status or 0
    if status in (408, 429):
        return "throttled"
    return "request" if 400 <= status < 500 else "server"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry the same provider after ``delay``
    seconds, fail over to the next one, or mark the provider misconfigured (and fail over)."""

    action: Literal["retry", "fail_over", "misconfigured"]
    delay: float = 0.0


FAIL_OVER = Decision("fail_over")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 30.0
    invalid_retries: int = 1
    """Asks again on the same provider after an answer that did not match the schema."""

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

    @staticmethod
    def counts(error: ProviderError) -> bool:
        """Does this failure count against the endpoint's circuit? Only a failure of the
        endpoint does (``COUNTED``); one about the request or its model records neither
        a failure nor a success."""
        return failure_kind(error) in COUNTED

    def decide(self, error: ProviderError, retry_number: int, *, others_left: bool,
               endpoints: int, time_left: float, pinned: bool = False,
               rand: Callable[[], float] = random.random) -> Decision:
        """The one place where a failed attempt's fate is decided.

        - 401/403: the provider is misconfigured (its key); retrying cannot help.
        - About the request or its model (a 4xx, a model not found, a context too long,
          whatever the status): fail over at once; asking again cannot mend it.
        - Nothing listening (connect refused) with another provider left and no other
          endpoint of this one: fail over at once (waiting is not free, failing over is).
          Pinned (the user named this provider), the same: one attempt, and the error
          block names the address and how to start it. A server is not started by
          waiting 1.5 s, and three failures would count three errors and open its circuit
          for one cell. As the cascade's last candidate it is still retried (a server
          that is restarting gets its chance before the cell fails).
        - Otherwise ``delay_for``; no delay (not retryable, retries used up, Retry-After
          beyond the cap) or one that would pass the request's deadline: fail over.
        """
        kind = failure_kind(error)
        if kind == "auth":
            return Decision("misconfigured")
        if kind in ("request", "model"):
            return FAIL_OVER
        if isinstance(error, ProviderConnectError) and (others_left or pinned) \
                and endpoints == 1:
            return FAIL_OVER
        delay = self.delay_for(error, retry_number, rand)
        if delay is None or delay >= time_left:
            return FAIL_OVER
        return Decision("retry", delay)

    def decide_invalid(self, invalid_number: int) -> Decision:
        """After an answer that did not match the request's schema (``invalid_number`` of
        them on this provider): ask it again at once, with the error fed back, up to
        ``invalid_retries`` times (the server is fine; the model slipped, and told what was
        wrong it usually mends it), then fail over. Pinned, failing over ends the route."""
        if invalid_number <= self.invalid_retries:
            return Decision("retry", 0.0)
        return FAIL_OVER
