"""OpenAI Chat Completions (and plain completions) events, one at a time: what one
decoded ``chat.completion.chunk`` becomes (Chunks of text, usage, the served model, notes
for what is not shown), every value a server controls checked by ``wire``. The adapter
(``openai_compat``) reads the body and hands each event here.

Wire format: https://platform.openai.com/docs/api-reference/chat-streaming
"""

from __future__ import annotations

from typing import Any

from timmy_magic.model.errors import ProviderProtocolError
from timmy_magic.providers.base import LIMIT_NOTE, Chunk, error_text, extras_note, usage_of
from timmy_magic.providers.tool_calls import CallAssembler
from timmy_magic.providers.wire import (
    TextJoiner,
    WireError,
    completion_text,
    content_text,
    model_name,
)


class ChatEvents:
    """One chat completions stream, event by event: ``event`` turns one decoded event (a
    dict) into Chunks, every value a server controls checked (``wire``); ``end`` gives
    what is left and says whether the stream ended as it should."""

    __slots__ = ("asked", "completion", "cut", "finished", "first", "joiner", "offered",
                 "provider", "reasoning", "tools")

    def __init__(self, provider: str, completion: bool = False, offered: bool = False
                 ) -> None:
        """``offered``: the request offered tools; the answer's calls are assembled from
        their fragments (``tool_calls.CallAssembler``) instead of counted in a note."""
        self.provider, self.completion, self.offered = provider, completion, offered
        self.asked = CallAssembler()
        self.first, self.finished, self.cut = True, False, False
        self.joiner = TextJoiner()
        self.reasoning = 0
        self.tools: set[str] = set()

    def event(self, kind: str, obj: Any, out: list[Chunk]) -> None:
        if not isinstance(obj, dict):
            raise WireError(f"an event holds {type(obj).__name__}, not an object")
        if kind == "error" or obj.get("error"):
            raise ProviderProtocolError(
                f"server error mid-stream: {error_text(obj.get('error', obj))}",
                provider=self.provider)
        if self.first:
            self.first = False
            out.append(Chunk(model=model_name(obj.get("model"))))
        if choices := obj.get("choices"):
            self._choice(choices[0] if isinstance(choices, list) else None, out)
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.finished = True
            out.append(Chunk(usage=usage_of(usage.get("prompt_tokens"),
                                            usage.get("completion_tokens"))))

    def _choice(self, choice: Any, out: list[Chunk]) -> None:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if self.completion and isinstance(choice, dict):
            delta = None  # a plain completion: the text is choices[0].text
            if text := self.joiner.push(completion_text(choice.get("text"))):
                out.append(Chunk(text=text))
        if not isinstance(choice, dict) or not isinstance(delta, dict | None):
            raise WireError(f"choices[0]{'' if self.completion else '.delta'} "
                            "is not an object")
        if delta:
            if text := self.joiner.push(content_text(delta.get("content"))):
                out.append(Chunk(text=text))
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            self.reasoning += len(thought) if isinstance(thought, str) else 0
            calls = delta.get("tool_calls")
            if self.offered and calls is not None:
                self.asked.openai_delta(calls)
            elif isinstance(calls, list):
                self.tools.update(repr(c.get("index", i)) if isinstance(c, dict) else str(i)
                                  for i, c in enumerate(calls))
        if reason := choice.get("finish_reason"):
            self.finished = True
            self.cut = self.cut or reason == "length"

    def end(self) -> list[Chunk]:
        """The last Chunks, when the stream has ended: held text, notes."""
        out = [Chunk(text=tail)] if (tail := self.joiner.flush()) else []
        if note := extras_note(self.reasoning, len(self.tools)):
            out.append(Chunk(note=note))
        if self.asked:
            out.append(Chunk(calls=self.asked.calls()))
        if self.cut:
            out.append(Chunk(note=LIMIT_NOTE))
        return out

    def check(self, done: bool) -> None:
        """After ``end``'s Chunks (``done``: ``[DONE]`` came): a ProviderProtocolError for
        a stream that sent nothing, or ended with no finish_reason, usage or ``[DONE]``."""
        if self.first:
            raise ProviderProtocolError("empty stream: the server sent no data",
                                        provider=self.provider)
        if not self.finished and not done:
            raise ProviderProtocolError(
                "stream ended early: no finish_reason, no usage, no [DONE]",
                provider=self.provider)
