"""OpenAI Chat Completions over SSE, over httpx: openai, openai_compatible, vllm_mlx, mlx_lm
and llama_cpp. They differ only in URL rules, keys and health checks.

A model with ``mode: completion`` in providers.yaml is asked through the plain completions
API instead (``POST /v1/completions``, a ``prompt``, ``choices[0].text`` in each chunk:
llama-server, vLLM, vllm-mlx and mlx-lm serve it): the prompt as written, with a system
prompt and earlier turns as a plain transcript before it (``completion_prompt``). A base
model with no chat template (the embedded Gemma 3 270M) answers well only this way. The
model's ``stop`` and ``params`` go into the body in both modes.

Wire format: https://platform.openai.com/docs/api-reference/chat-streaming — ``data:``
events holding ``chat.completion.chunk`` objects, the usage in a last chunk with empty
``choices`` (``stream_options.include_usage``), then ``data: [DONE]``; an object with an
``error`` key is an in-stream error. Why not the openai SDK: it builds a pydantic model
per chunk, which cost several times the whole router's own CPU per request (see
docs/performance.md), and its 3.x releases ship their own HTTP stack (httpx2).

URL rules (kept from the original cascade router):
- vllm_mlx / mlx_lm / llama_cpp: the base URL may or may not end in ``/v1``; health is on the
  server root (``/health``, any trailing ``/v1`` stripped) and the client gets ``/v1``
  appended when missing. No API key.
- openai_compatible: ``/v1`` is appended only when the URL has no path at all; health is
  ``GET {base}/models``.
- openai: the URL is used as given; health is ``GET {base}/models`` with the key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from timmy_magic.model.chat import ChatRequest, Message
from timmy_magic.model.errors import ProviderProtocolError, ProviderTimeout
from timmy_magic.providers.base import (
    LIMIT_NOTE,
    Body,
    Chunk,
    Probe,
    Timeouts,
    error_text,
    extras_note,
    get_json,
    listed_windows,
    make_http_client,
    mapped_errors,
    model_ids,
    post_stream,
    probe_error,
    usage_of,
)
from timmy_magic.providers.chat_events import ChatEvents
from timmy_magic.providers.parts import openai_content
from timmy_magic.providers.tool_calls import CallAssembler, openai_message, openai_tools
from timmy_magic.providers.wire import (
    TextJoiner,
    WireError,
    completion_text,
    content_text,
    loads,
    model_name,
    token_count,
)

if TYPE_CHECKING:
    from timmy_magic.config import ModelConfig, ProviderConfig

_ROOT_HEALTH = {"vllm_mlx", "mlx_lm", "llama_cpp"}
# mlx_lm.server answers with its loaded model only for these names (others hit the hub).
_FALLBACK_MODEL = {"mlx_lm": "default_model", "llama_cpp": "default"}


def strip_v1(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


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


def _text_of(m: Message) -> str:
    """A message's text (a completion prompt is text: image parts are left out)."""
    c = m.content
    return c if isinstance(c, str) else "".join(
        t for p in c if isinstance(t := getattr(p, "text", None), str))


TRANSCRIPT_STOP = "\nUser:"


def completion_prompt(messages: Sequence[Message]) -> tuple[str, tuple[str, ...]]:
    """(prompt, extra stop strings) for a completion-mode model. One user message is the
    prompt as written; a system prompt goes before it, a blank line between; earlier turns
    (``--chat``) go before it as a plain transcript (``User: ...`` / ``Assistant: ...``),
    and then ``TRANSCRIPT_STOP`` keeps the model from writing the next turn itself."""
    *before, last = messages or (Message("user", ""),)
    parts = [_text_of(m) for m in before if m.role == "system"]
    turns = [f"{'User' if m.role == 'user' else 'Assistant'}: {_text_of(m)}"
             for m in before if m.role != "system"]
    if turns:
        parts.append("\n".join(turns))
    prompt = "\n\n".join([*parts, _text_of(last)])
    return prompt, ((TRANSCRIPT_STOP,) if turns else ())


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
        self._cfg = cfg
        self._base = client_base(cfg.type, url)
        self._timeouts = timeouts
        self._health_url = health_url(cfg.type, url)
        key = cfg.key()
        self._headers = dict(cfg.headers)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._http = make_http_client(timeouts)
        self.served_models: tuple[str, ...] = ()
        self._windows_for: tuple[str, ...] = ()
        self._known_windows: dict[str, int] = {}

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

    def _payload(self, request: ChatRequest, model: str, stream: bool = True
                 ) -> dict[str, Any]:
        """The body: ``messages`` (chat), or ``prompt`` for a completion-mode model (then
        sent to ``/completions``: see ``_path``); the model's ``stop`` and ``params``."""
        mc = self._cfg.model(model)
        payload: dict[str, Any] = {"model": model, "stream": stream}
        stops: tuple[str, ...] = ()
        if mc is not None and mc.mode == "completion":
            payload["prompt"], stops = completion_prompt(request.messages)
        else:
            payload["messages"] = [
                openai_message(m, openai_content(m)) if m.role == "tool" or m.tool_calls
                else {"role": m.role, "content": openai_content(m)} for m in request.messages]
            if request.tools:
                payload["tools"] = openai_tools(request.tools)
        if stream:
            payload["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if (schema := request.schema) is not None:
            payload["response_format"] = schema.response_format()
            if "prompt" in payload and self.type == "llama_cpp":
                payload["json_schema"] = schema.json  # llama-server's completions read this
        if mc is not None:
            self._model_fields(payload, mc, stops)
        return payload

    @staticmethod
    def _model_fields(payload: dict[str, Any], mc: ModelConfig, stops: tuple[str, ...]
                      ) -> None:
        if stop := tuple(dict.fromkeys((*mc.stop, *stops))):
            payload["stop"] = list(stop)
        payload.update(mc.params)  # checked at load: none is a field set above

    def _path(self, payload: dict[str, Any]) -> str:
        return self._base + ("/completions" if "prompt" in payload else "/chat/completions")

    async def stream(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        with mapped_errors(self.provider):
            payload = self._payload(request, await self._model(model))
            async with post_stream(self._http, self._path(payload),
                                   payload=payload, headers=self._headers,
                                   provider=self.provider,
                                   content_type="text/event-stream") as r:
                async for chunk in self._chunks(r, "prompt" in payload, "tools" in payload):
                    yield chunk

    async def complete(self, request: ChatRequest, model: str | None) -> AsyncIterator[Chunk]:
        """The answer in one JSON body (``stream: false``): the model, the text, a note,
        the usage, as ``stream`` yields them. One body costs the client far less than an
        SSE event per token (docs/performance.md); used by ``Router.complete(stream=False)``."""
        with mapped_errors(self.provider):
            payload = self._payload(request, await self._model(model), stream=False)
            async with post_stream(self._http, self._path(payload),
                                   payload=payload, headers=self._headers,
                                   provider=self.provider,
                                   content_type="application/json") as r:
                raw = await Body(r).read()
            for chunk in self._whole(raw, "prompt" in payload, "tools" in payload):
                yield chunk

    def _whole(self, raw: bytes, completion: bool = False, offered: bool = False
               ) -> list[Chunk]:
        """A ``chat.completion`` (or, ``completion``, a ``text_completion``) object ->
        Chunks, every server value checked (``wire``)."""
        obj = loads(raw.decode("utf-8", "replace"))
        if not isinstance(obj, dict):
            raise WireError(f"the answer is {type(obj).__name__}, not an object")
        if obj.get("error"):
            raise ProviderProtocolError(f"server error: {error_text(obj['error'])}",
                                        provider=self.provider)
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if completion and isinstance(choice, dict):
            message = {"content": completion_text(choice.get("text"))}
        if not isinstance(message, dict):
            raise WireError("the answer has no choices[0]"
                            f"{'' if completion else '.message'} object")
        out = [Chunk(model=model_name(obj.get("model")))]
        joiner = TextJoiner()
        if text := joiner.push(content_text(message.get("content"))) + joiner.flush():
            out.append(Chunk(text=text))
        thought = message.get("reasoning_content") or message.get("reasoning")
        calls = message.get("tool_calls")
        if offered and calls:  # the calls the loop runs (providers/tool_calls.py)
            (asked := CallAssembler()).openai_delta(calls)
            out.append(Chunk(calls=asked.calls()))
            calls = None
        if note := extras_note(len(thought) if isinstance(thought, str) else 0,
                               len(calls) if isinstance(calls, list) else 0):
            out.append(Chunk(note=note))
        if isinstance(choice, dict) and choice.get("finish_reason") == "length":
            out.append(Chunk(note=LIMIT_NOTE))
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            out.append(Chunk(usage=usage_of(usage.get("prompt_tokens"),
                                            usage.get("completion_tokens"))))
        return out

    async def _chunks(self, r: httpx.Response, completion: bool = False,
                      offered: bool = False) -> AsyncIterator[Chunk]:
        """Chat completion chunks (or, ``completion``, plain completion chunks: the text in
        ``choices[0].text``) -> Chunks, a network read at a time (``ChatEvents`` decodes
        each event). Plain dicts, no SDK models: building a pydantic model per chunk cost
        more CPU than the rest of the router together."""
        decode = ChatEvents(self.provider, completion, offered)
        body = Body(r)
        done = False
        async for events in body.sse_reads():
            out: list[Chunk] = []
            try:
                for event, data in events:
                    if data == "[DONE]" or data.strip() == "[DONE]":
                        done = True
                        break
                    decode.event(event, loads(data), out)
            except Exception:
                for chunk in out:  # what came before the bad event is delivered first
                    yield chunk
                raise
            for chunk in out:
                yield chunk
            if done:
                break
        for chunk in decode.end():
            yield chunk
        decode.check(done)
        if done:
            await body.drain()

    async def probe(self, timeout: float) -> Probe:
        t0 = time.monotonic()
        try:
            status, body, latency = await get_json(self._http, self._health_url, timeout,
                                                   self._headers)
            state, detail, error = _parse_health(self.type, status, body)
            models = await self._models(body, timeout)
        except Exception as exc:  # noqa: BLE001
            return probe_error(exc, self.provider, timeout)
        if models:
            self.served_models = models
        left = timeout - (time.monotonic() - t0) - 0.05  # of the health pass's deadline
        windows = await self._windows(body, models, left) if state != "down" else {}
        return Probe(state, latency, models, detail, error,  # type: ignore[arg-type]
                     windows)

    async def _windows(self, health_body: Any, models: tuple[str, ...],
                       timeout: float) -> dict[str, int]:
        """The context windows the server reports: vLLM's ``max_model_len`` in its model
        list, llama-server's ``/props`` (``default_generation_settings.n_ctx``: one
        request's share of the KV cache). Asked again only when the served models
        change; a failure here never makes the probe fail."""
        found = listed_windows(health_body)
        if found or not models or models == self._windows_for or timeout <= 0:
            return found or self._known_windows
        try:
            if self.type == "llama_cpp":
                status, body, _ = await get_json(self._http, strip_v1(self.url) + "/props",
                                                 timeout, self._headers)
                settings = body.get("default_generation_settings") \
                    if isinstance(body, dict) else None
                n = token_count(settings.get("n_ctx")) if isinstance(settings, dict) else None
                found = dict.fromkeys(models, n) if n else {}
            elif self.type == "vllm_mlx":  # vllm-mlx 0.6 lists no max_model_len (yet)
                status, body, _ = await get_json(self._http, self._base + "/models",
                                                 timeout, self._headers)
                found = listed_windows(body)
            else:
                return {}
        except Exception:  # noqa: BLE001
            return self._known_windows
        if status == 200:
            self._windows_for, self._known_windows = models, found
        return found

    async def _models(self, health_body: Any, timeout: float) -> tuple[str, ...]:
        if model_ids(health_body):
            return model_ids(health_body)
        if isinstance(health_body, dict) and health_body.get("model_name"):
            return (str(health_body["model_name"]),)
        if self.type in ("mlx_lm", "llama_cpp"):
            try:
                status, body, _ = await get_json(self._http, self._base + "/models", timeout,
                                                 self._headers)
            except Exception:  # noqa: BLE001
                return ()
            if status == 200:
                return model_ids(body)
        return ()

    async def aclose(self) -> None:
        await self._http.aclose()


def make_backend(cfg: ProviderConfig, url: str, timeouts: Timeouts) -> OpenAICompatBackend:
    return OpenAICompatBackend(cfg, url, timeouts)

