"""What a stream delivered so far, and the partial ``Result`` made of it when the stream
ends without one (an interrupt, a failed column). Pure: the times are passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from timmy_magic.model.chat import Attempt, Result, RouteTrace, Timings, Trying, Usage


@dataclass
class AnswerCollector:
    """What a stream delivered so far; builds the partial Result on an interrupt."""

    t0: float
    parts: list[str] = field(default_factory=list)
    provider: str | None = None
    endpoint: str = ""
    attempt: int = 0
    attempt_started: float = 0.0
    ttft: float | None = None
    result: Result | None = None

    def trying(self, ev: Trying, now: float) -> None:
        self.provider, self.endpoint, self.attempt = ev.provider, ev.endpoint, ev.number
        self.attempt_started = now

    def delta(self, text: str, now: float) -> None:
        if self.ttft is None:
            self.ttft = now - self.t0
        self.parts.append(text)

    def discard(self) -> None:
        """The text so far was not the answer (it failed the schema): start over."""
        self.parts.clear()
        self.ttft = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def partial(self, error: str, model: str | None, now: float) -> Result:
        chunks = len(self.parts)
        gen = now - self.t0 - (self.ttft or 0.0)
        tok_s = chunks / gen if chunks and gen > 0 else None
        attempts = (Attempt(self.provider, self.endpoint, self.attempt,
                            "broken" if chunks else "failed", error,
                            now - self.attempt_started),) if self.provider else ()
        trace = RouteTrace((self.provider,) if self.provider else (), (), attempts)
        return Result(self.text, self.provider, model, Usage(None, chunks, estimated=True),
                      Timings(self.ttft, now - self.t0, tok_s), trace, error=error,
                      endpoint=self.endpoint or None)
