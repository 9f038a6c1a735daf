"""Anthropic Messages API (streaming), through the anthropic SDK.

Tested against vllm-mlx's ``/v1/messages``, which speaks the same event stream:
message_start (input usage), content_block_delta/text_delta..., message_delta (output
usage, stop_reason), message_stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any


from ..errors import ProviderProtocolError
from ..types import ChatRequest, Usage
from .base import Chunk, Probe, Timeouts, get_json, make_http_client, map_error, probe_error
from .openai_compat import strip_v1

if TYPE_CHECKING:
    from ..config import ProviderConfig

DEFAULT_MAX_TOKENS = 1024  # the Messages API requires max_tokens
API_VERSION = "2023-06-01"


class AnthropicBackend:
    def __init__(self, cfg: ProviderConfig, url: str, timeouts: Timeouts) -> None:
        self.provider, self.url = cfg.name, url
        self._root = strip_v1(url)
        key = cfg.key() or "not-needed"
        self._headers = {"x-api-key": key, "anthropic-version": API_VERSION, **cfg.headers}
        self._http = make_http_client(timeouts)
        self._key, self._extra = key, dict(cfg.headers)
        self._client_: Any = None
        self.served_models: tuple[str, ...] = ()

    @property
    def _client(self) -> Any:
        """The anthropic SDK client, made on first use: health checks never import it."""
        if self._client_ is None:
            import anthropic

            self._client_ = anthropic.AsyncAnthropic(base_url=self._root, api_key=self._key,
                                                     max_retries=0, http_client=self._http,
                                                     default_headers=self._extra or None)
        return self._client_

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        name = model or (self.served_models[0] if self.served_models else None)
        if not name:
            raise ProviderProtocolError("no model configured: set `models:` in providers.yaml "
                                        "or pass -m", provider=self.provider)
        try:
            stream = await self._client.messages.create(
                model=name, stream=True, max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
                messages=[{"role": m.role, "content": m.content}
                          for m in request.messages if m.role != "system"], **kwargs)
        except Exception as exc:
            raise map_error(exc, self.provider) from exc
        try:
            async for chunk in self._chunks(stream):
                yield chunk
        except ProviderProtocolError:
            raise
        except Exception as exc:
            raise map_error(exc, self.provider) from exc
        finally:
            await stream.close()

    async def _chunks(self, stream: Any) -> AsyncIterator[Chunk]:
        input_tokens: int | None = None
        stopped = False
        async for ev in stream:
            kind = ev.type
            if kind == "message_start":
                input_tokens = ev.message.usage.input_tokens
                yield Chunk(model=ev.message.model)
            elif kind == "content_block_delta" and getattr(ev.delta, "type", "") == "text_delta":
                if ev.delta.text:
                    yield Chunk(text=ev.delta.text)
            elif kind == "message_delta":
                yield Chunk(usage=Usage(input_tokens, ev.usage.output_tokens))
            elif kind == "message_stop":
                stopped = True
        if not stopped:
            raise ProviderProtocolError("stream ended before message_stop",
                                        provider=self.provider)

    async def probe(self, timeout: float) -> Probe:
        try:
            status, body, latency = await get_json(self._http, self._root + "/v1/models",
                                                   timeout, self._headers)
        except Exception as exc:
            return probe_error(exc, self.provider, timeout)
        if status != 200:
            return Probe("down", latency, error=f"/v1/models answered HTTP {status}")
        data = body.get("data") if isinstance(body, dict) else None
        models = tuple(str(m.get("id")) for m in data or [] if isinstance(m, dict))
        if models:
            self.served_models = models
        return Probe("healthy", latency, models)

    async def aclose(self) -> None:
        await self._http.aclose()


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> AnthropicBackend:
    return AnthropicBackend(cfg, url, timeouts)
