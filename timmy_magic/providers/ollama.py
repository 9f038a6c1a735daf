"""Ollama's native API: health from ``/api/tags`` (and loaded models from ``/api/ps``),
chat from ``/api/chat`` as NDJSON, with the server's own timings (nanoseconds).
See https://github.com/ollama/ollama/blob/main/docs/api.md
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import ProviderConnectError, ProviderProtocolError
from ..types import ChatRequest, Usage
from .base import (
    Chunk,
    Probe,
    Timeouts,
    get_json,
    make_http_client,
    map_error,
    post_stream,
    probe_error,
)
from .openai_compat import strip_v1

if TYPE_CHECKING:
    from ..config import ProviderConfig


def server_timings(final: dict[str, Any]) -> dict[str, Any]:
    """Ollama's own figures, converted from ns to seconds and tokens/s."""
    out: dict[str, Any] = {}
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        if isinstance(final.get(key), (int, float)):
            out[key.replace("_duration", "_s")] = final[key] / 1e9
    if final.get("eval_count") and final.get("eval_duration"):
        out["eval_tok_s"] = final["eval_count"] / (final["eval_duration"] / 1e9)
    return out


class OllamaBackend:
    def __init__(self, cfg: ProviderConfig, url: str, timeouts: Timeouts) -> None:
        self.provider, self.url = cfg.name, url
        self._root = strip_v1(url)
        self._http = make_http_client(timeouts, headers=cfg.headers)
        self._timeout = timeouts.health
        self.served_models: tuple[str, ...] = ()

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        name = model or await self._first_model()
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        payload = {"model": name, "stream": True, "options": options,
                   "messages": [{"role": m.role, "content": m.content}
                                for m in request.messages]}
        try:
            async with post_stream(self._http, self._root + "/api/chat", payload=payload,
                                   headers=None, provider=self.provider,
                                   content_type=None) as r:
                async for chunk in self._chunks(r):
                    yield chunk
        except ProviderProtocolError:
            raise
        except Exception as exc:
            raise map_error(exc, self.provider) from exc

    async def _first_model(self) -> str:
        if not self.served_models:
            probe = await self.probe(self._timeout)
            if probe.state == "down":
                raise ProviderConnectError(f"cannot list models: {probe.error}",
                                           provider=self.provider)
        if not self.served_models:
            raise ProviderProtocolError("no model configured and the server lists none "
                                        "(ollama pull one, or set `models:`)",
                                        provider=self.provider)
        return self.served_models[0]

    async def _chunks(self, r: httpx.Response) -> AsyncIterator[Chunk]:
        first = True
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            obj = json.loads(line)
            if "error" in obj:
                raise ProviderProtocolError(f"server error mid-stream: {obj['error']}",
                                            provider=self.provider)
            if first:
                first = False
                yield Chunk(model=obj.get("model"))
            text = (obj.get("message") or {}).get("content")
            if text:
                yield Chunk(text=text)
            if obj.get("done"):
                yield Chunk(usage=Usage(obj.get("prompt_eval_count"), obj.get("eval_count")),
                            server=server_timings(obj))
                return
        raise ProviderProtocolError("stream ended before done:true", provider=self.provider)

    async def probe(self, timeout: float) -> Probe:
        try:
            status, body, latency = await get_json(self._http, self._root + "/api/tags", timeout)
            if status != 200:
                return Probe("down", latency, error=f"/api/tags answered HTTP {status}")
            models = tuple(str(m.get("name")) for m in (body or {}).get("models", [])
                           if isinstance(m, dict))
            ps_status, ps, _ = await get_json(self._http, self._root + "/api/ps", timeout)
        except Exception as exc:
            return probe_error(exc, self.provider, timeout)
        loaded = [m.get("name") for m in (ps or {}).get("models", [])] if ps_status == 200 else []
        if models:
            self.served_models = models
        return Probe("healthy", latency, models, {"loaded_models": loaded})

    async def aclose(self) -> None:
        await self._http.aclose()


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> OllamaBackend:
    return OllamaBackend(cfg, url, timeouts)
