"""The cache key: what decides an answer, as canonical JSON, hashed.

``request_key`` is the SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8)
of the request as it is sent, after every default is applied (``RequestFields.resolved``,
the defaults ``config.request_defaults`` owns and the attempt applies): the messages
(role and content, the system prompt and earlier turns included; OpenAI content parts
made of text only are joined, as the adapters join them), the model, temperature and
max_tokens as resolved (the request's, else the model's in providers.yaml, else
``cascade.default_max_tokens``), the model's ``stop``, ``params`` and API mode (chat or
completion), the provider and its type, the JSON schema and the output format. A request
sent through the cascade keys on what each enabled provider would be sent. So raising a
model's ``max_tokens`` and reloading misses instead of replaying the answer cut at the
old cap. Never an API key, a header or a URL: ``RequestFields`` has no place for one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from timmy_magic.config.request_defaults import with_defaults
from timmy_magic.model.chat import ChatRequest, Message
from timmy_magic.model.errors import InvalidRequest
from timmy_magic.model.framing import request_of
from timmy_magic.privacy.redact import REDACT
from timmy_magic.providers.parts import openai_content
from timmy_magic.text.markup import shorten

if TYPE_CHECKING:
    from timmy_magic.config import CascadeConfig, Config, ProviderConfig

KEY_VERSION = 2
"""Part of every key: a change to what the key covers changes this, and old entries miss.
2: the request as sent (defaults of the model and the cascade applied), not as asked."""
SUMMARY_CHARS = 200


@dataclass(frozen=True, slots=True)
class RequestFields:
    """What decides an answer, and nothing else (no key, no header, no URL).
    ``provider`` None is the cascade; ``model`` is the resolved model when known."""

    messages: Sequence[Message | Mapping[str, Any]]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    provider: str | None = None
    schema: Mapping[str, Any] | str | None = None
    """A JSON schema, as a dict or as JSON text (parsed, so layout does not matter)."""
    format: str | None = None
    api_mode: str | None = None
    """``chat`` or ``completion``: the same prompt asked two ways answers differently."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Any other option that changes the answer (``stop``, ``top_p``, ``seed``...)."""
    tools: Sequence[Mapping[str, Any]] = ()
    """The tools offered (``ToolSpec.canonical``): name, description, parameters."""

    @classmethod
    def of(cls, req: ChatRequest, **kw: Any) -> RequestFields:
        """From a ``ChatRequest`` as asked (no default applied); ``kw`` overrides or adds
        (``model=``, ``schema=``, ``format=``, ``api_mode=``, ``options=``). A request
        is keyed with ``resolved``."""
        base = {"messages": req.messages, "model": req.model,
                "temperature": req.temperature, "max_tokens": req.max_tokens,
                "provider": req.provider,
                "schema": req.schema.canonical() if req.schema is not None else None,
                "tools": tuple(t.canonical() for t in req.tools)}
        return cls(**{**base, **kw})

    @classmethod
    def resolved(cls, req: ChatRequest, config: Config, fmt: str | None) -> RequestFields:
        """The request as it is sent, every default applied: what the key must cover, so a
        changed providers.yaml misses instead of replaying an answer asked another way.
        Pinned (``req.provider``): the model, max_tokens, temperature, stop, params and
        API mode that provider is sent (``sent_settings``). Through the cascade: the
        request as asked, and what each enabled provider would be sent (any of them may
        answer). ``fmt``: the output format a cell asked for (None from Python)."""
        base = cls.of(req, format=fmt)
        if req.provider is not None:
            pinned = config.provider(req.provider)
            if pinned is None:  # the router names the unknown provider; key it as asked
                return base
            sent = sent_settings(req, pinned, config.cascade)
            return cls.of(req, model=sent.pop("model"), temperature=sent.pop("temperature"),
                          max_tokens=sent.pop("max_tokens"), api_mode=sent.pop("api_mode"),
                          format=fmt, options=sent)
        return cls.of(req, format=fmt, options={"cascade": [
            sent_settings(req, p, config.cascade) for p in config.providers if p.enabled]})

    def canonical(self) -> dict[str, Any]:
        tools = {"tools": [dict(t) for t in self.tools]} if self.tools else {}
        return {
            **tools,
            "v": KEY_VERSION,
            "messages": [_canonical_message(m) for m in self.messages],
            "model": self.model,
            "temperature": None if self.temperature is None else float(self.temperature),
            "max_tokens": self.max_tokens,
            "provider": self.provider or "cascade",
            "schema": _canonical_schema(self.schema),
            "format": self.format,
            "api_mode": self.api_mode,
            "options": dict(self.options),
        }

    def summary(self) -> str:
        """The prompt (last user message), one line, at most ``SUMMARY_CHARS``."""
        return request_summary(self.messages)


def sent_settings(req: ChatRequest, provider: ProviderConfig,
                  cascade: CascadeConfig) -> dict[str, Any]:
    """What ``provider`` is sent for ``req`` besides the messages and the schema: the
    defaults the attempt applies (``with_defaults``) and the model's fields the adapter
    adds (``stop``, ``params``, chat or completion API), with the provider's name and type
    (an adapter builds its own body: Anthropic's, Ollama's)."""
    model, listed, max_tokens, temperature = with_defaults(req, provider, cascade)
    return {"provider": provider.name, "type": provider.type, "model": model,
            "max_tokens": max_tokens,
            "temperature": None if temperature is None else float(temperature),
            "api_mode": listed.mode if listed is not None else "chat",
            "stop": list(listed.stop) if listed is not None else [],
            "params": dict(listed.params) if listed is not None else {}}


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, text as is (not \\u-escaped): equal values give equal
    text. A value JSON cannot hold (NaN, a set) is a ValueError or TypeError."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def request_key(fields: RequestFields) -> str:
    """SHA-256 (hex) of the canonical request."""
    try:
        text = canonical_json(fields.canonical())
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"request cannot be cached: {exc}") from None
    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_schema(schema: Mapping[str, Any] | str | None) -> Any:
    if isinstance(schema, str):
        return json.loads(schema)
    return schema


def _canonical_message(m: Message | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(m, Message):
        if m.tool_calls or m.role == "tool":  # a tool conversation: calls and results
            return {"role": m.role, "content": m.text, "name": m.name,
                    "tool_call_id": m.tool_call_id,
                    "tool_calls": [c.canonical() for c in m.tool_calls]}
        if isinstance(m.content, str):
            return {"role": m.role, "content": m.content}
        return {"role": m.role, "content": _canonical_content(openai_content(m))}
    return {"role": m.get("role"), "content": _canonical_content(m.get("content"))}


def _canonical_content(content: Any) -> Any:
    """A string stays; a list of parts that are all text is joined (as the adapters join
    them); otherwise each text part becomes ``{"type": "text", "text": ...}``."""
    if not isinstance(content, list):
        return content
    parts = [_canonical_part(p) for p in content]
    if all(p.get("type") == "text" and set(p) == {"type", "text"} for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _canonical_part(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, Mapping):
        d = dict(part)
        if "type" not in d and isinstance(d.get("text"), str):
            d["type"] = "text"
        return d
    return {"type": "unknown", "value": part}


def request_summary(messages: Sequence[Message | Mapping[str, Any]]) -> str:
    """The user's last request, masked (``REDACT``), on one line of at most
    ``SUMMARY_CHARS``: without the notebook context a cell puts before it (``--cells``,
    ``--vars``, ``--error``; ``framing.request_of``), which begins every such message
    alike."""
    text = ""
    for m in messages:
        msg = _canonical_message(m)
        if msg["role"] == "user":
            text = _text_of(msg["content"])
    return shorten(REDACT(request_of(text)), SUMMARY_CHARS)


def _text_of(content: Any) -> str:
    """A message's content as text: parts joined, each non-text part as ``[type]``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) if p.get("type") == "text" else f"[{p.get('type')}]"
            for p in content if isinstance(p, dict))
    return canonical_json(content)
