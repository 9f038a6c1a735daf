"""Anthropic Messages API (streaming) over httpx.

Wire format: https://docs.anthropic.com/en/api/messages-streaming — an SSE stream of
message_start (input usage), content_block_delta/text_delta..., message_delta (output usage,
stop_reason), message_stop; ``event: error`` carries an in-stream error. Tested against
vllm-mlx's ``/v1/messages``, which speaks the same stream.

Why not the anthropic SDK: its 2.x releases ship their own HTTP stack (httpx2), so it could
share neither our connection pool nor our timeout and error mapping; the protocol is small.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from timmy_magic.model.chat import ChatRequest
from timmy_magic.model.errors import ProviderProtocolError
from timmy_magic.providers.base import (
    LIMIT_NOTE,
    Body,
    Chunk,
    Probe,
    Timeouts,
    error_text,
    extras_note,
    get_json,
    make_http_client,
    mapped_errors,
    model_ids,
    post_stream,
    probe_error,
    usage_of,
)
from timmy_magic.providers.openai_compat import strip_v1
from timmy_magic.providers.parts import anthropic_content
from timmy_magic.providers.tool_calls import CallAssembler, anthropic_messages, anthropic_tools
from timmy_magic.providers.wire import (
    TextJoiner,
    WireError,
    content_text,
    loads,
    model_name,
    token_count,
)

if TYPE_CHECKING:
    from timmy_magic.config import ProviderConfig

DEFAULT_MAX_TOKENS = 1024  # the Messages API requires max_tokens
API_VERSION = "2023-06-01"


class AnthropicBackend:
    def __init__(self, cfg: ProviderConfig, url: str, timeouts: Timeouts) -> None:
        self.provider, self.url = cfg.name, url
        self._root = strip_v1(url)
        self._headers = {"x-api-key": cfg.key() or "not-needed",
                         "anthropic-version": API_VERSION, **cfg.headers}
        self._http = make_http_client(timeouts)
        self.served_models: tuple[str, ...] = ()

    def _payload(self, request: ChatRequest, model: str) -> dict[str, Any]:
        system = "\n\n".join(m.text for m in request.messages if m.role == "system")
        payload: dict[str, Any] = {
            "model": model, "stream": True,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": anthropic_messages(request.messages, anthropic_content)}
        if system:
            payload["system"] = system
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.tools:
            payload["tools"] = anthropic_tools(request.tools)
        schema = request.schema
        if schema is not None and schema.json.get("type") == "object" and not request.tools:
            # Anthropic's structured output: one tool whose input is the answer, forced.
            # Its input streams as input_json_delta, passed on as the answer's text. (A
            # schema whose top is not an object cannot be a tool's input: those rely on
            # the instruction in the system prompt and the kernel's validation.)
            payload["tools"] = [{"name": schema.name, "input_schema": schema.json,
                                 "description": "Give the answer in this structure."}]
            payload["tool_choice"] = {"type": "tool", "name": schema.name}
        return payload

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        name = model or (self.served_models[0] if self.served_models else None)
        if not name:
            raise ProviderProtocolError("no model configured: set `models:` in providers.yaml "
                                        "or pass -m", provider=self.provider)
        payload = self._payload(request, name)
        forced = payload.get("tool_choice", {}).get("name")
        with mapped_errors(self.provider):
            async with post_stream(self._http, self._root + "/v1/messages",
                                   payload=payload, headers=self._headers,
                                   provider=self.provider,
                                   content_type="text/event-stream") as r:
                async for chunk in self._chunks(r, forced, "tools" in payload and not forced):
                    yield chunk

    async def _chunks(self, r: httpx.Response, answer_tool: str | None = None,
                      offered: bool = False) -> AsyncIterator[Chunk]:
        """``answer_tool``: the forced tool of a schema request, whose input is the answer."""
        input_tokens: int | None = None
        answering = False
        started = cut = False
        joiner = TextJoiner()
        reasoning = tools = 0
        asked = CallAssembler()  # offered tools: each tool_use block by its index
        body = Body(r)
        async for event, data in body.sse():
            obj = loads(data)
            if not isinstance(obj, dict):
                raise WireError(f"an event holds {type(obj).__name__}, not an object")
            kind = obj.get("type", event)
            if kind == "message_start":
                started = True
                msg = obj.get("message")
                if not isinstance(msg, dict):
                    raise WireError("message_start without a message object")
                usage = msg.get("usage")
                # 0 means "not counted" (vllm-mlx streams 0 here): a prompt is never empty
                input_tokens = token_count(usage.get("input_tokens")) or None \
                    if isinstance(usage, dict) else None
                yield Chunk(model=model_name(msg.get("model")))
            elif kind == "content_block_start":
                block = obj.get("content_block")
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    if block.get("name") == answer_tool:
                        answering = True  # the forced tool: its input is the answer
                    elif offered:
                        asked.part(obj.get("index"), block.get("id"), block.get("name"))
                    else:
                        tools += 1
            elif kind == "content_block_delta":
                delta = obj.get("delta")
                if not isinstance(delta, dict):
                    raise WireError("content_block_delta without a delta object")
                if delta.get("type") == "text_delta":
                    text = joiner.push(content_text(delta.get("text")))
                    if text:
                        yield Chunk(text=text)
                elif delta.get("type") == "input_json_delta" and offered:
                    asked.part(obj.get("index"), arguments=delta.get("partial_json"))
                elif delta.get("type") == "input_json_delta" and answering:
                    text = joiner.push(content_text(delta.get("partial_json")))
                    if text:
                        yield Chunk(text=text)
                elif delta.get("type") == "thinking_delta":
                    thought = delta.get("thinking")
                    reasoning += len(thought) if isinstance(thought, str) else 0
            elif kind == "message_delta":
                stop = obj.get("delta")
                cut = cut or (isinstance(stop, dict) and stop.get("stop_reason") == "max_tokens")
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    input_tokens = token_count(usage.get("input_tokens")) or input_tokens
                    yield Chunk(usage=usage_of(input_tokens, usage.get("output_tokens")))
            elif kind == "message_stop":
                if not started:  # a bare message_stop is no answer, not an empty one
                    raise ProviderProtocolError("empty stream: message_stop without "
                                                "message_start", provider=self.provider)
                if tail := joiner.flush():
                    yield Chunk(text=tail)
                if note := extras_note(reasoning, tools):
                    yield Chunk(note=note)
                if asked:
                    yield Chunk(calls=asked.calls())
                if cut:
                    yield Chunk(note=LIMIT_NOTE)
                await body.drain()
                return
            elif kind == "error":
                raise ProviderProtocolError(
                    f"server error mid-stream: {error_text(obj.get('error') or obj)}",
                    provider=self.provider)
        raise ProviderProtocolError("stream ended before message_stop", provider=self.provider)

    async def probe(self, timeout: float) -> Probe:
        try:
            status, body, latency = await get_json(self._http, self._root + "/v1/models",
                                                   timeout, self._headers)
        except Exception as exc:  # noqa: BLE001
            return probe_error(exc, self.provider, timeout)
        if status != 200:
            return Probe("down", latency, error=f"/v1/models answered HTTP {status}")
        models = model_ids(body)
        if models:
            self.served_models = models
        return Probe("healthy", latency, models)

    async def aclose(self) -> None:
        await self._http.aclose()


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> AnthropicBackend:
    return AnthropicBackend(cfg, url, timeouts)
