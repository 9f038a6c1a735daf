"""OpenAI Chat Completions over SSE, through the openai SDK: openai, openai_compatible,
vllm_mlx, mlx_lm and llama_cpp. They differ only in URL rules, keys and health checks.

URL rules (kept from the original cascade router):
- vllm_mlx / mlx_lm / llama_cpp: the base URL may or may not end in ``/v1``; health is on the
  server root (``/health``, any trailing ``/v1`` stripped) and the client gets ``/v1``
  appended when missing. No API key.
- openai_compatible: ``/v1`` is appended only when the URL has no path at all; health is
  ``GET {base}/models``.
- openai: the URL is used as given; health is ``GET {base}/models`` with the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit


from ..errors import ProviderProtocolError, ProviderTimeout
from ..types import ChatRequest, Usage
from .base import Chunk, Probe, Timeouts, get_json, make_http_client, map_error, probe_error

if TYPE_CHECKING:
    from ..config import ProviderConfig

_ROOT_HEALTH = {"vllm_mlx", "mlx_lm", "llama_cpp"}
# mlx_lm.server answers with its loaded model only for these names (others hit the hub).
_FALLBACK_MODEL = {"mlx_lm": "default_model", "llama_cpp": "default"}


def strip_v1(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def client_base(type_name: str, url: str) -> str:
    url = url.rstrip("/")
    if type_name in _ROOT_HEALTH:
        return strip_v1(url) + "/v1"
    if type_name == "openai_compatible" and urlsplit(url).path in ("", "/"):
        return url + "/v1"
    return url


def health_url(type_name: str, url: str) -> str:
    if type_name in _ROOT_HEALTH:
        return strip_v1(url) + "/health"
    return client_base(type_name, url) + "/models"


def _parse_health(type_name: str, status: int, body: Any) -> tuple[str, dict[str, Any], str | None]:
    """(state, server detail, error) from a health answer."""
    detail = body if isinstance(body, dict) else {}
    if type_name == "vllm_mlx":
        if status != 200:
            return "down", detail, f"/health answered HTTP {status}"
        if detail.get("model_loaded") is False:
            return "degraded", detail, "model not loaded"
        return ("healthy" if detail.get("status") in ("healthy", "ok") else "degraded",
                detail, None)
    if type_name == "llama_cpp" and status == 503:
        return "degraded", detail, "server is loading the model"
    if status != 200:
        return "down", detail, f"health answered HTTP {status}"
    return "healthy", ({} if "data" in detail else detail), None


class OpenAICompatBackend:
    def __init__(self, cfg: ProviderConfig, url: str, timeouts: Timeouts) -> None:
        self.provider, self.type, self.url = cfg.name, cfg.type, url
        self._base = client_base(cfg.type, url)
        self._timeouts = timeouts
        self._health_url = health_url(cfg.type, url)
        key = cfg.key()
        self._extra = dict(cfg.headers)
        self._headers = dict(cfg.headers)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._key = key
        self._http = make_http_client(timeouts)
        self._client_: Any = None
        self.served_models: tuple[str, ...] = ()

    @property
    def _client(self) -> Any:
        """The openai SDK client, made on first use: health checks never import the SDK."""
        if self._client_ is None:
            import openai

            self._client_ = openai.AsyncOpenAI(base_url=self._base,
                                               api_key=self._key or "not-needed",
                                               max_retries=0,
                                               http_client=self._http,  # type: ignore[arg-type]
                                               default_headers=self._extra or None)
        return self._client_

    async def _model(self, model: str | None) -> str:
        """The model to ask for: the requested one, else what the server says it serves
        (learned from health, or asked now), else the type's fallback name."""
        if model:
            return model
        if self.type == "mlx_lm":  # any name but its loaded one makes it try the hub
            return _FALLBACK_MODEL["mlx_lm"]
        if not self.served_models:  # ask once; errors propagate (mapped by the caller)
            try:
                _, body, _ = await get_json(self._http, self._health_url,
                                            self._timeouts.health, self._headers)
            except TimeoutError:
                raise ProviderTimeout(f"no answer to the model lookup ({self._health_url}) "
                                      f"within {self._timeouts.health:g}s",
                                      provider=self.provider) from None
            self.served_models = await self._models(body, self._timeouts.health)
        if self.served_models:
            return self.served_models[0]
        fallback = _FALLBACK_MODEL.get(self.type)
        if fallback:
            return fallback
        raise ProviderProtocolError(
            "no model configured and the server lists none: set `models:` "
            "in providers.yaml or pass -m", provider=self.provider)

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        try:
            stream = await self._client.chat.completions.create(
                model=await self._model(model), stream=True, stream_options={"include_usage": True},
                messages=[{"role": m.role, "content": m.content} for m in request.messages],
                **kwargs)
        except Exception as exc:
            raise map_error(exc, self.provider) from exc
        try:
            ctype = stream.response.headers.get("content-type", "")
            if "text/event-stream" not in ctype:
                raise ProviderProtocolError(
                    f"expected an event stream, got content-type {ctype or '(none)'}",
                    provider=self.provider)
            async for chunk in self._chunks(stream):
                yield chunk
        except ProviderProtocolError:
            raise
        except Exception as exc:
            raise map_error(exc, self.provider) from exc
        finally:
            await stream.close()

    async def _chunks(self, stream: Any) -> AsyncIterator[Chunk]:
        finished = False
        first = True
        async for c in stream:
            if first:
                first = False
                yield Chunk(model=c.model)
            if c.choices:
                choice = c.choices[0]
                text = choice.delta.content if choice.delta else None
                if text:
                    yield Chunk(text=text)
                if choice.finish_reason:
                    finished = True
            if c.usage is not None:
                finished = True
                yield Chunk(usage=Usage(c.usage.prompt_tokens, c.usage.completion_tokens))
        if first:
            raise ProviderProtocolError("empty stream: the server sent no data",
                                        provider=self.provider)
        if not finished:
            raise ProviderProtocolError(
                "stream ended early: no finish_reason, no usage, no [DONE]",
                provider=self.provider)

    async def probe(self, timeout: float) -> Probe:
        try:
            status, body, latency = await get_json(self._http, self._health_url, timeout,
                                                   self._headers)
            state, detail, error = _parse_health(self.type, status, body)
            models = await self._models(body, timeout)
        except Exception as exc:
            return probe_error(exc, self.provider, timeout)
        if models:
            self.served_models = models
        return Probe(state, latency, models, detail, error)  # type: ignore[arg-type]

    async def _models(self, health_body: Any, timeout: float) -> tuple[str, ...]:
        if isinstance(health_body, dict) and isinstance(health_body.get("data"), list):
            return tuple(str(m.get("id")) for m in health_body["data"] if isinstance(m, dict))
        if isinstance(health_body, dict) and health_body.get("model_name"):
            return (str(health_body["model_name"]),)
        if self.type in ("mlx_lm", "llama_cpp"):
            try:
                status, body, _ = await get_json(self._http, self._base + "/models", timeout,
                                                 self._headers)
            except Exception:
                return ()
            if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
                return tuple(str(m.get("id")) for m in body["data"] if isinstance(m, dict))
        return ()

    async def aclose(self) -> None:
        await self._http.aclose()


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> OpenAICompatBackend:
    return OpenAICompatBackend(cfg, url, timeouts)

