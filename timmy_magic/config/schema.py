"""The typed configuration: frozen pydantic models of providers.yaml.

Each field's type is one of ``values.py``'s checked types. Unknown keys are kept (and
warned about by ``parse.py``), never an error; ``repr()`` of any model passes through
``REDACT``, and a provider's repr masks header values and URL credentials (``model_dump``
stays raw). What a provider's ``type:`` means (cloud, default URL) comes from
``provider_types.py``: plain data, no provider code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
)

from timmy_magic.config import provider_types
from timmy_magic.config.errors import TRUST_HINT
from timmy_magic.config.values import (
    DAY,
    Arg,
    Delay,
    Flag,
    Price,
    Seconds,
    Text,
    Tokens,
    Url,
    Word,
    api_mode,
    body_params,
    callable_path,
    clean_api_key,
    env_name,
    flag,
    header_name,
    header_value,
    number,
    stop_strings,
)
from timmy_magic.privacy.redact import REDACT, display_url, mask


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() pass through REDACT (an unknown key may hold a pasted key)."""
        for name, value in super().__repr_args__():
            yield name, _redacted(value)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return REDACT(value)
    if isinstance(value, list | tuple):
        return type(value)(_redacted(v) for v in value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


class BreakerConfig(_Model):
    failure_threshold: Annotated[int, number(1, 1_000_000, integer=True)] = 3
    recovery_timeout: Seconds = 30.0
    half_open_max_calls: Annotated[int, number(1, 1000, integer=True)] = 1


class CascadeConfig(_Model):
    timeout_seconds: Seconds = 120.0
    connect_timeout_seconds: Seconds = 3.0
    first_token_timeout_seconds: Seconds = 30.0
    idle_timeout_seconds: Seconds = 30.0
    health_timeout_seconds: Seconds = 2.0
    health_interval_seconds: Seconds = 30.0
    max_retries_per_provider: Annotated[int, number(0, 100, integer=True)] = 2
    retry_delay_seconds: Delay = 0.5
    max_retry_delay_seconds: Delay = 8.0
    retry_after_cap_seconds: Delay = 30.0
    default_max_tokens: Tokens = 1024
    """Output cap when neither the request nor the model sets one (a base model may never
    stop by itself); null for no cap."""
    circuit_breaker: BreakerConfig = BreakerConfig()


class QuotaConfig(_Model):
    command: Annotated[list[Arg], Field(min_length=1)] | None = None
    callable: Annotated[str, AfterValidator(callable_path)] | None = None
    ttl_seconds: Delay = 60.0
    timeout_seconds: Seconds = 2.0
    closed_tiers: list[Literal["burst", "active", "resting"]] = ["resting"]


class GateConfig(_Model):
    local_only: Flag = False
    daily_budget_usd: Annotated[float | None,
                                number(0, 1e9, unit=" USD", optional=True)] = None
    quota: QuotaConfig | None = None


class ModelConfig(_Model):
    name: Text
    default: Flag = False
    context_window: Tokens = None
    capabilities: list[Text] = []
    price_per_1k_input: Price = 0.0
    price_per_1k_output: Price = 0.0
    max_tokens: Tokens = None
    """Default output cap for this model when a request sets none."""
    mode: Annotated[Literal["chat", "completion"], PlainValidator(api_mode)] = "chat"
    """``chat``: asked through the chat API (messages). ``completion``: through the plain
    completions API (``/v1/completions``, a prompt): a base model with no chat template
    (the embedded Gemma 3 270M) answers well only this way. The name LiteLLM uses."""
    temperature: Annotated[float | None, number(0, 2, optional=True)] = None
    """Default temperature for this model when a request sets none."""
    tool_protocol: Literal["native", "prompted"] | None = None
    """With ``capabilities: [tools]``: how tools are offered. ``native``: the API's own
    ``tools`` field; ``prompted``: described in the prompt, the reply constrained by a
    JSON schema (``tools/prompted.py``). Unset: prompted for ``mode: completion``,
    native otherwise."""
    stop: Annotated[tuple[str, ...], BeforeValidator(stop_strings)] = ()
    """Stop strings sent with every request to this model (OpenAI-compatible types)."""
    params: Annotated[dict[str, Any], PlainValidator(body_params)] = {}
    """Extra request-body fields for an OpenAI-compatible server, under the server's own
    names (``repeat_penalty: 1.1`` for llama-server); other types ignore them."""


class LaunchConfig(_Model):
    command: Annotated[list[Arg], Field(min_length=1)]
    env: dict[Annotated[str, AfterValidator(env_name)], Arg] = {}
    cwd: Arg | None = None
    ready_timeout: Seconds = 120.0
    idle_timeout: Annotated[float | None, number(0.01, DAY, unit=" seconds",
                                                 optional=True)] = None


class ProviderConfig(_Model):
    name: Word
    type: Word
    enabled: Flag = True
    priority: Annotated[int, number(-1_000_000, 1_000_000, integer=True)] = 100
    base_url: Url | None = Field(default=None, alias="url")
    api_key: Annotated[SecretStr | None, AfterValidator(clean_api_key)] = None
    cloud: Annotated[bool | None, PlainValidator(lambda v: None if v is None else flag(v))] \
        = None
    models: list[ModelConfig] = []
    replicas: list[Url] = []
    headers: dict[Annotated[str, AfterValidator(header_name)],
                  Annotated[str, AfterValidator(header_value)]] = {}
    launch: LaunchConfig | None = None
    max_concurrency: Annotated[int | None, number(1, 10_000, integer=True, optional=True)] \
        = None
    """Most requests in flight at once at this provider (a server's slots, a cloud's rate
    limit), from every caller: cells, background jobs, ``map`` and ``evaluate`` (whose
    batch pool also queues by it); the others wait their turn. null: no limit."""
    missing_env: tuple[str, ...] = ()
    """Environment variables the api_key needed but were unset ("not configured")."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Header values and URL credentials masked (``model_dump`` stays raw)."""
        for name, value in super().__repr_args__():
            if name == "base_url" and isinstance(value, str):
                value = display_url(value)
            elif name == "replicas":
                value = [display_url(u) for u in value]
            elif name == "headers":
                value = {k: mask(v) for k, v in value.items()}
            yield name, value

    @property
    def kind(self) -> provider_types.ProviderType:
        """What the ``type:`` means (cloud, default URL, needs a key)."""
        kind = provider_types.get(self.type)
        assert kind is not None  # checked at load
        return kind

    @property
    def is_cloud(self) -> bool:
        return self.kind.cloud if self.cloud is None else self.cloud

    @property
    def urls(self) -> list[str]:
        """The endpoints: the replicas if any, else the base URL, else the type's default."""
        if self.replicas:
            return list(self.replicas)
        url = self.base_url or self.kind.default_url
        return [url] if url else []

    @property
    def shown_urls(self) -> list[str]:
        """``urls`` as they may be shown: passwords and secret query values masked."""
        return [display_url(u) for u in self.urls]

    @property
    def default_model(self) -> str | None:
        for m in self.models:
            if m.default:
                return m.name
        return self.models[0].name if self.models else None

    def model(self, name: str | None) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


def _cache_mode(value: object) -> str:
    """off | on | replay. YAML 1.1 reads a bare ``off`` / ``on`` as false / true: those
    mean what was written."""
    if value is False or value is True:
        return "on" if value else "off"
    if isinstance(value, str) and value.strip().lower() in ("off", "on", "replay"):
        return value.strip().lower()
    raise ValueError("must be off, on or replay")


class CacheConfig(_Model):
    """The answer cache's settings, its one settings type (``timmy_magic.cache``): off by
    default. The environment goes over them in the order ``cache/settings.py`` documents:
    ``$TIMMY_CACHE_PATH`` over ``path``, ``$TIMMY_CACHE_MODE`` over ``mode`` for notebook
    cells (Python calls follow ``mode``, or their ``cache=``). An untrusted file may not
    set ``path``, ``mode`` or ``max_mb`` (``CACHE_HELD``): a cloned repository's file
    would otherwise choose which of the user's files the cache opens, turn recording on,
    or evict the user's recorded answers with a tiny cap."""

    path: Arg | None = None
    mode: Annotated[Literal["off", "on", "replay"], PlainValidator(_cache_mode)] = "off"
    ttl_days: Annotated[float | None, number(0.0001, 36_500, unit=" days",
                                             optional=True)] = None
    max_mb: Annotated[float, number(0.01, 1_000_000, unit=" MB")] = 200.0


class Config(_Model):
    cascade: CascadeConfig = CascadeConfig()
    cloud_gate: GateConfig = Field(default=GateConfig(), alias="metabolic")
    cache: CacheConfig = CacheConfig()
    providers: list[ProviderConfig] = []
    source: str = "<defaults>"
    warnings: tuple[str, ...] = ()
    trusted: bool = True
    """False: loaded from an untrusted file, without what ``held_back`` lists."""
    trusted_by: str = ""
    """Why the file is trusted ("the packaged default", "named by $TIMMY_PROVIDERS"...)."""
    held_back: tuple[str, ...] = ()
    """What an untrusted file asked for and did not get: "launch of 'x'", "quota command",
    "${OPENAI_API_KEY} in 'openai'"..."""

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def held_back_line(self) -> str:
        """One line saying what was held back and how to allow it ("" if nothing was)."""
        if not self.held_back:
            return ""
        return (f"{self.source} is not trusted: held back {', '.join(self.held_back)} "
                f"({TRUST_HINT})")
