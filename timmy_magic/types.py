"""Values that flow through the router: requests, stream events, traces, results.

All are frozen dataclasses (or plain enums of strings) so they can be shared between the
router's loop thread and the kernel thread without locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .errors import InvalidRequest, RoutingError
from .trace import Attempt as Attempt  # re-exported: the trace is part of a Result
from .trace import RouteTrace as RouteTrace
from .trace import Skip as Skip
from .trace import SkipReason as SkipReason

Role = Literal["system", "user", "assistant"]
HealthState = Literal[
    "healthy", "degraded", "down", "circuit_open", "misconfigured",
    "disabled", "not_configured", "not_installed", "unknown",
    "stopped", "starting",  # managed (launch:) servers: started on first need
]
CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request. ``provider`` pins it: only that provider is tried."""

    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        """Reject what cannot be encoded as a JSON request (else every provider would
        fail on it in turn, and their circuit breakers would count it)."""
        if self.temperature is not None and not math.isfinite(self.temperature):
            raise InvalidRequest(f"temperature must be a finite number, not {self.temperature}")
        for i, m in enumerate(self.messages):
            try:
                m.content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(f"{m.role} message {i + 1} is not valid Unicode text "
                                     f"(lone surrogate at position {exc.start})") from None

    @classmethod
    def of(cls, prompt: str | ChatRequest, *, system: str | None = None,
           **kw: Any) -> ChatRequest:
        if isinstance(prompt, ChatRequest):
            return prompt
        msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        return cls(messages=tuple(msgs), **kw)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False
    """True when the server sent no usage and the counts were estimated on the client."""


@dataclass(frozen=True, slots=True)
class Timings:
    ttft_s: float | None
    total_s: float
    output_tokens_per_s: float | None


# ---------------------------------------------------------------- route trace
# (in trace.py, which errors.py can import without importing this module)

# ---------------------------------------------------------------- results & events


@dataclass(frozen=True, slots=True)
class Result:
    """A finished (or partially finished) answer. ``error`` is set when it is partial."""

    text: str
    provider: str | None
    model: str | None
    usage: Usage
    timings: Timings
    trace: RouteTrace
    error: str | None = None
    cost_usd: float = 0.0
    endpoint: str | None = None
    notes: tuple[str, ...] = ()
    """What the reader should know besides the text (reasoning or tool calls not shown,
    an empty answer), one line each."""
    context: tuple[dict[str, Any], ...] = ()
    """What went with the prompt (``--cells``, ``--vars``, ``--error``): one row per item,
    kind, name, characters, estimated tokens, cut or dropped."""
    cached: bool = False
    """Answered from the answer cache: no request was sent (the timings are those of the
    recorded answer, a note says when and from where)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def footer(self) -> str:
        """One line of plain text: provider · model · TTFT · tokens · tokens/s · time ·
        cost, cleaned and redacted (``markup.plain``: the provider and model names come from
        outside); renderers escape it for where it goes."""
        from .markup import plain

        t = self.timings
        parts = [f"{self.provider or '(no provider)'} · {self.model or '(model unknown)'}"]
        if self.cached:
            parts[0] = "cached · " + parts[0]
        if t.ttft_s is not None:
            parts.append(f"TTFT {t.ttft_s:.2f}s")
        if self.usage.output_tokens is not None:
            est = "~" if self.usage.estimated else ""
            parts.append(f"{est}{self.usage.output_tokens} tok")
        if t.output_tokens_per_s is not None:
            parts.append(f"{t.output_tokens_per_s:.1f} tok/s")
        parts.append(f"{t.total_s:.2f}s total")
        if self.cost_usd:
            parts.append(f"${self.cost_usd:.4f}")
        return " ".join(plain(" · ".join(parts)).split())

    def _repr_markdown_(self) -> str:
        from .render import answer_markdown  # render imports this module

        return answer_markdown(self)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class Trying:
    """The router is about to send the request to ``provider`` (attempt ``number``)."""

    provider: str
    endpoint: str
    number: int


@dataclass(frozen=True, slots=True)
class Done:
    """The last event of every stream. ``result.error`` is set if the stream broke after
    its first token: the partial text is kept in ``result.text``."""

    result: Result


@dataclass(frozen=True, slots=True)
class Status:
    """Progress worth showing while no text flows yet (e.g. a local server starting)."""

    provider: str
    message: str


Event = Union[Delta, Trying, Status, Done]


# ---------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    url: str
    state: HealthState
    latency_s: float | None = None
    error: str | None = None
    circuit: CircuitState = "closed"
    outstanding: int = 0


@dataclass(frozen=True, slots=True)
class HealthReport:
    provider: str
    type: str
    state: HealthState
    is_cloud: bool
    latency_s: float | None = None
    models: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    checked_at: float | None = None
    circuit: CircuitState = "closed"
    endpoints: tuple[EndpointHealth, ...] = ()
    hint: str | None = None
    checking: bool = False
    """A health check of this provider is in flight right now."""
@dataclass(frozen=True, slots=True)
class Failed:
    """A side-by-side column got no answer (``Router.stream_many``): its error."""

    error: RoutingError


