"""Values that flow through the router: requests, stream events, traces, results.

All are frozen dataclasses (or plain enums of strings) so they can be shared between the
router's loop thread and the kernel thread without locks.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Union

from timmy_magic.model.errors import InvalidRequest, RoutingError
from timmy_magic.model.schema import Schema
from timmy_magic.model.tokens import estimate_tokens, image_tokens
from timmy_magic.model.tools import ToolCall, ToolRan, ToolRecord, ToolSpec
from timmy_magic.model.trace import Attempt as Attempt  # re-exported: the trace is part of a Result
from timmy_magic.model.trace import RouteTrace as RouteTrace
from timmy_magic.model.trace import Skip as Skip
from timmy_magic.model.trace import SkipReason as SkipReason
from timmy_magic.privacy.masking import Masker
from timmy_magic.text.markup import shorten

Role = Literal["system", "user", "assistant", "tool"]

# A provider's health is four separate facts; the badge shows one state made of them
# (``health.report``), and planning reads only what it needs (``cascade._health``).
ProbeState = Literal["healthy", "degraded", "down", "unknown"]
"""What the last health checks of its endpoints said (``unknown``: none yet)."""
ConfigState = Literal["disabled", "not_configured", "not_installed", "misconfigured"]
"""Why its configuration keeps it out: turned off, no key, no binary, rejected by its
server (401/403)."""
ServerState = Literal["stopped", "starting", "not_running"]
"""A local server's life: managed (``launch:``) servers are stopped or starting; one that
has not answered in this session and was never seen up is not running (not started)."""
CircuitState = Literal["closed", "open", "half_open"]
"""Its circuit breaker (``circuit_open`` in the badge when every endpoint's is open)."""
HealthState = Literal[ProbeState, ConfigState, ServerState, "circuit_open"]
"""The one state a badge shows: the first that applies of configuration, circuit,
server life, then the probes (``health.report`` decides)."""


IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""What every vision dialect takes (Anthropic's list; OpenAI and Ollama take these too)."""
MAX_IMAGE_BYTES = 20 << 20
"""Largest image accepted (OpenAI's limit; Anthropic's is smaller and it says so)."""


@dataclass(frozen=True, slots=True)
class TextPart:
    """Text in a message made of parts."""

    text: str


@dataclass(frozen=True, slots=True, repr=False)
class ImagePart:
    """An image in a user message, for a model with ``capabilities: [vision]``: its bytes
    as base64 and its MIME type. Checked (``content_parts``) when a Message holds it."""

    data: str
    """Base64 (standard alphabet, padded), no ``data:`` prefix."""
    mime: str = "image/png"
    width: int | None = None
    height: int | None = None

    @classmethod
    def of(cls, raw: bytes, mime: str = "image/png", width: int | None = None,
           height: int | None = None) -> ImagePart:
        return cls(base64.b64encode(raw).decode("ascii"), mime, width, height)

    @classmethod
    def from_data_url(cls, url: Any) -> ImagePart:
        """``data:image/png;base64,...`` (InvalidRequest for anything else: an http URL
        cannot be sent to every dialect, so it is not taken)."""
        m = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
        if m is None:
            shown = shorten(url, 40) if isinstance(url, str) else url
            raise InvalidRequest(f"an image must be a base64 data URL "
                                 f"(data:image/png;base64,...), not {shown!r}")
        return cls(m.group(2), m.group(1).lower())

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.data}"

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)

    def __repr__(self) -> str:  # never the bytes (a log, an error, a repr in a notebook)
        size = f", {self.width}x{self.height}" if self.width and self.height else ""
        return f"ImagePart({self.mime}, {len(self.data) * 3 // 4:,} bytes{size})"


Part = Union[TextPart, ImagePart]  # noqa: UP007
Content = Union[str, tuple[Part, ...]]  # noqa: UP007
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


def content_parts(value: Any, role: str = "user") -> Content:
    """The one check of message content: a string stays; a sequence of parts (``TextPart``
    / ``ImagePart``, a plain string, or OpenAI-style dicts: ``{"type": "text", "text"}``,
    ``{"type": "image_url", "image_url": {"url": "data:..."}}``) becomes a tuple of typed
    parts, each image checked (MIME type, base64, size, only in user messages). Parts that
    are all text are joined into one string, as every dialect reads them."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"message content must be text or a list of parts, not "
                             f"{type(value).__name__}")
    parts = tuple(_part(p) for p in value)
    if not parts:
        raise InvalidRequest("message content is an empty list of parts")
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    for p in parts:
        if isinstance(p, ImagePart):
            _check_image(p, role)
    return parts


def _part(p: Any) -> Part:
    if isinstance(p, (TextPart, ImagePart)):
        return p
    if isinstance(p, str):
        return TextPart(p)
    if isinstance(p, dict):
        kind = p.get("type", "text" if "text" in p else None)
        if kind == "text" and isinstance(p.get("text"), str):
            return TextPart(p["text"])
        if kind == "image_url":
            url = p.get("image_url")
            return ImagePart.from_data_url(url.get("url") if isinstance(url, dict) else url)
        if kind == "image" and isinstance(src := p.get("source"), dict) \
                and src.get("type") == "base64":  # Anthropic's block
            return ImagePart(str(src.get("data", "")), str(src.get("media_type", "")))
        raise InvalidRequest(f"unknown content part type {str(kind)[:40]!r} (text, "
                             f"image_url)")
    raise InvalidRequest(f"a content part must be text or an image, not {type(p).__name__}")


def _check_image(p: ImagePart, role: str) -> None:
    if role != "user":
        raise InvalidRequest(f"images go in user messages only, not in a {role} message")
    if p.mime not in IMAGE_MIMES:
        raise InvalidRequest(f"image type {p.mime[:40]!r} is not one of "
                             f"{', '.join(sorted(IMAGE_MIMES))}")
    if not isinstance(p.data, str) or not p.data:
        raise InvalidRequest("an image part holds no data")
    if len(p.data) * 3 // 4 > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"an image is larger than {MAX_IMAGE_BYTES >> 20} MB")
    try:
        binascii.a2b_base64(p.data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("an image's data is not valid base64") from None


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: Content
    """Text, or a tuple of parts (text and images): ``content_parts`` checks it."""
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant message: the calls the model asked for in that turn."""
    tool_call_id: str | None = None
    """A ``tool`` message: the id of the call whose result it holds."""
    name: str | None = None
    """A ``tool`` message: the name of the function that ran."""

    def __post_init__(self) -> None:
        if type(self.content) is not str:
            object.__setattr__(self, "content", content_parts(self.content, self.role))

    @property
    def text(self) -> str:
        """The message's text (its text parts joined)."""
        c = self.content
        return c if isinstance(c, str) else "".join(
            p.text for p in c if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        c = self.content
        return () if isinstance(c, str) else tuple(p for p in c if isinstance(p, ImagePart))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request. ``provider`` pins it: only that provider is tried."""

    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    provider: str | None = None
    schema: Schema | None = None
    """The answer must match it (``structured.Schema``; a pydantic class or a JSON-schema
    dict is made into one): sent as each server's constrained decoding, checked here."""
    tools: tuple[ToolSpec, ...] = ()
    """Functions the model may call (``tools.Tool.spec``); only providers whose model
    declares ``capabilities: [tools]`` are tried."""
    instruct: bool = False
    """An assistant's task (``%llm fix``, ``explain``): only a model that follows
    instructions can do it, so a ``mode: completion`` model (a base model that continues
    text) is skipped for it (``completion_model``), pinned or not."""

    def __post_init__(self) -> None:
        """Reject what cannot be encoded as a JSON request (else every provider would
        fail on it in turn, and their circuit breakers would count it)."""
        if self.schema is not None and type(self.schema) is not Schema:
            object.__setattr__(self, "schema", Schema.of(self.schema))
        if self.temperature is not None and not math.isfinite(self.temperature):
            raise InvalidRequest(f"temperature must be a finite number, not {self.temperature}")
        object.__setattr__(self, "messages", _masked_messages(self.messages))
        for i, m in enumerate(self.messages):
            try:
                m.text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(f"{m.role} message {i + 1} is not valid Unicode text "
                                     f"(lone surrogate at position {exc.start})") from None

    # What planning needs (planner.py): estimated when asked, never stored.
    @property
    def needs_vision(self) -> bool:
        """A message holds an image: only providers whose model has ``vision`` can take it."""
        return any(type(m.content) is tuple and m.images for m in self.messages)

    @property
    def needs_tools(self) -> bool:
        return bool(self.tools)

    @property
    def input_tokens(self) -> int:
        """Estimated tokens of the messages (``tokens.estimate_tokens`` of their text),
        each image by its size (``tokens.image_tokens``)."""
        text = "".join(m.text for m in self.messages)
        return estimate_tokens(text) + sum(p.tokens for m in self.messages for p in m.images)

    @classmethod
    def of(cls, prompt: str | ChatRequest, *, system: str | None = None,
           **kw: Any) -> ChatRequest:
        if isinstance(prompt, ChatRequest):
            return prompt
        msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        return cls(messages=tuple(msgs), **kw)


def _masked_messages(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The one outbound step every request passes when it is made: each message's text
    (each text part) with every secret ``masking.Masker`` knows replaced by ``***``.
    Context was already masked on its raw values (``context.build_context``); this is
    the net under every other path (a prompt from Python, ``map``, a tool result)."""
    masker = Masker()
    out = []
    changed = False
    for m in messages:
        c = m.content
        if isinstance(c, str):
            new: Content = masker.text(c)
        else:
            new = tuple(TextPart(masker.text(p.text)) if isinstance(p, TextPart) else p
                        for p in c)
        if new != c:
            changed = True
            m = replace(m, content=new)
        out.append(m)
    return tuple(out) if changed else messages


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
    data: Any = None
    """With a schema: the validated answer (an instance of the pydantic class, or JSON
    values for a JSON-schema dict). None without one, or when the answer was invalid
    (``error`` then says why, ``text`` holds what the model wrote)."""
    calls: tuple[ToolCall, ...] = ()
    """The tool calls the model asked for in this turn (not run yet: a tool loop runs
    them and asks again)."""
    tool_calls: tuple[ToolRecord, ...] = ()
    """After a tool loop: every call, in order, with its result or error."""
    rounds: int = 0
    """After a tool loop: how many times the model asked for calls."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def footer(self) -> str:
        """One line of plain text: provider · model · TTFT · tokens · tokens/s · time ·
        cost, cleaned and redacted (``markup.plain``: the provider and model names come from
        outside); renderers escape it for where it goes."""
        from timmy_magic.text.markup import plain

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
        if self.rounds:
            calls = len(self.tool_calls)
            parts.append(f"{calls} tool call{'s' if calls != 1 else ''} in "
                         f"{self.rounds} round{'s' if self.rounds != 1 else ''}")
        return " ".join(plain(" · ".join(parts)).split())

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


@dataclass(frozen=True, slots=True)
class Discard:
    """The text streamed since the last ``Trying`` is not the answer (it did not match the
    request's schema): drop it; another attempt follows, or the final ``Done`` says why."""

    provider: str
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A side-by-side column got no answer (``Router.stream_many``): its error."""

    error: RoutingError


Event = Union[Delta, Trying, Status, Discard, Done, ToolRan]  # noqa: UP007


# ---------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    url: str
    state: ProbeState
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
