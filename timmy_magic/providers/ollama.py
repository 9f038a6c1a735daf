"""Ollama's native API: health from ``/api/tags`` (and loaded models from ``/api/ps``),
chat from ``/api/chat`` as NDJSON, with the server's own timings (nanoseconds).
See https://github.com/ollama/ollama/blob/main/docs/api.md
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from timmy_magic.model.chat import ChatRequest
from timmy_magic.model.errors import ProviderConnectError, ProviderProtocolError
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
    post_stream,
    probe_error,
    usage_of,
)
from timmy_magic.providers.openai_compat import strip_v1
from timmy_magic.providers.parts import ollama_message
from timmy_magic.providers.tool_calls import CallAssembler, openai_tools
from timmy_magic.providers.tool_calls import ollama_message as tool_message
from timmy_magic.providers.wire import TextJoiner, WireError, content_text, model_name, token_count

if TYPE_CHECKING:
    from timmy_magic.config import ProviderConfig

SHOW_PER_PASS = 8
"""Most models asked about (``/api/show``) in one health pass; the rest in later ones."""


class OllamaBackend:
    def __init__(self, cfg: ProviderConfig, url: str, timeouts: Timeouts) -> None:
        self.provider, self.url = cfg.name, url
        self._root = strip_v1(url)
        self._http = make_http_client(timeouts, headers=cfg.headers)
        self._timeout = timeouts.health
        self.served_models: tuple[str, ...] = ()
        self._shown: dict[str, tuple[int | None, frozenset[str]]] = {}
        """(window or None, capabilities) from /api/show, by model."""

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        name = model or await self._first_model()
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        payload: dict[str, Any] = {
            "model": name, "stream": True, "options": options,
            "messages": [tool_message(m, ollama_message(m)) for m in request.messages]}
        if request.tools:
            payload["tools"] = openai_tools(request.tools)
        if request.schema is not None:
            payload["format"] = request.schema.json  # Ollama's structured outputs
        with mapped_errors(self.provider):
            async with post_stream(self._http, self._root + "/api/chat", payload=payload,
                                   headers=None, provider=self.provider,
                                   content_type=None) as r:
                async for chunk in self._chunks(r, bool(request.tools)):
                    yield chunk

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

    async def _chunks(self, r: httpx.Response, offered: bool = False
                      ) -> AsyncIterator[Chunk]:
        first = True
        asked = CallAssembler()  # offered tools: each call arrives whole
        joiner = TextJoiner()
        reasoning = tools = 0
        body = Body(r)
        async for obj in body.ndjson():
            if not isinstance(obj, dict):
                raise WireError(f"a line holds {type(obj).__name__}, not an object")
            if "error" in obj:
                raise ProviderProtocolError(f"server error mid-stream: "
                                            f"{error_text(obj['error'])}",
                                            provider=self.provider)
            if first:
                first = False
                yield Chunk(model=model_name(obj.get("model")))
            message = obj.get("message") or {}
            if not isinstance(message, dict):
                raise WireError("message is not an object")
            text = joiner.push(content_text(message.get("content")))
            if text:
                yield Chunk(text=text)
            thought = message.get("thinking")
            reasoning += len(thought) if isinstance(thought, str) else 0
            calls = message.get("tool_calls")
            if offered and calls is not None:
                if not isinstance(calls, list):
                    raise WireError("tool_calls is not a list")
                for c in calls:
                    asked.openai_delta([{**c, "index": len(asked)}] if isinstance(c, dict)
                                       else [c])
            else:
                tools += len(calls) if isinstance(calls, list) else 0
            if obj.get("done"):
                if tail := joiner.flush():
                    yield Chunk(text=tail)
                if note := extras_note(reasoning, tools):
                    yield Chunk(note=note)
                if asked:
                    yield Chunk(calls=asked.calls())
                if obj.get("done_reason") == "length":
                    yield Chunk(note=LIMIT_NOTE)
                yield Chunk(usage=usage_of(obj.get("prompt_eval_count"), obj.get("eval_count")))
                await body.drain()
                return
        raise ProviderProtocolError("stream ended before done:true", provider=self.provider)

    async def probe(self, timeout: float) -> Probe:
        t0 = time.monotonic()
        try:
            status, body, latency = await get_json(self._http, self._root + "/api/tags", timeout)
            if status != 200:
                return Probe("down", latency, error=f"/api/tags answered HTTP {status}")
            models = tuple(str(m.get("name")) for m in (body or {}).get("models", [])
                           if isinstance(m, dict))
            ps_status, ps, _ = await get_json(self._http, self._root + "/api/ps", timeout)
        except Exception as exc:  # noqa: BLE001
            return probe_error(exc, self.provider, timeout)
        loaded = [m.get("name") for m in (ps or {}).get("models", [])] if ps_status == 200 else []
        if models:
            self.served_models = models
        shown = await self._shows(models, timeout - (time.monotonic() - t0))
        return Probe("healthy", latency, models, {"loaded_models": loaded},
                     windows={m: n for m, (n, _) in shown.items() if n},
                     capabilities={m: c for m, (_, c) in shown.items() if c})

    async def _shows(self, models: tuple[str, ...], timeout: float
                     ) -> dict[str, tuple[int | None, frozenset[str]]]:
        """Each model's window and capabilities from ``POST /api/show``: the ``num_ctx``
        its Modelfile sets (what the server runs it with), else
        ``model_info["<arch>.context_length"]``; ``capabilities`` (``tools``, ``vision``:
        Ollama 0.6 on). Asked once per model (at most ``SHOW_PER_PASS`` per health pass,
        concurrently); a failure never makes the probe fail."""
        ask = [m for m in models if m not in self._shown][:SHOW_PER_PASS]
        if ask and timeout > 0.05:  # what is left of the health pass's one deadline
            got = await asyncio.gather(*(self._show(m, timeout - 0.05) for m in ask),
                                       return_exceptions=True)
            for name, n in zip(ask, got, strict=True):
                if not isinstance(n, BaseException):
                    self._shown[name] = n
        return {m: s for m in models if (s := self._shown.get(m))}

    async def _show(self, model: str, timeout: float) -> tuple[int | None, frozenset[str]]:
        async with asyncio.timeout(timeout):
            r = await self._http.post(self._root + "/api/show", json={"model": model},
                                      timeout=timeout)
        if r.status_code != 200:
            raise ValueError(f"/api/show answered HTTP {r.status_code}")
        body = r.json()
        if not isinstance(body, dict):
            return None, frozenset()
        caps = body.get("capabilities")
        said = frozenset(c for c in caps[:32] if isinstance(c, str) and c in KNOWN_CAPABILITIES) \
            if isinstance(caps, list) else frozenset()
        return _window(body), said

    async def aclose(self) -> None:
        await self._http.aclose()


KNOWN_CAPABILITIES = frozenset({"tools", "vision"})
"""What a server may tell us a model can do that planning reads (the rest is ignored)."""


def _window(body: dict[str, Any]) -> int | None:
    params = body.get("parameters")
    if isinstance(params, str):
        for line in params.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "num_ctx" and value.strip().isdigit():
                return token_count(int(value.strip())) or None
    info = body.get("model_info")
    if isinstance(info, dict):
        for key, value in info.items():
            if isinstance(key, str) and key.endswith(".context_length"):
                return token_count(value) or None
    return None


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> OllamaBackend:
    return OllamaBackend(cfg, url, timeouts)
