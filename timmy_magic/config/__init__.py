"""providers.yaml -> validated, typed configuration.

Which file: an explicit path, else ``$TIMMY_PROVIDERS``, else ``./providers.yaml``, else the
user config dir (``platformdirs.user_config_dir("timmy-magic")/providers.yaml``), else the
default shipped inside the package.

Trust (like direnv or VS Code workspace trust): ``./providers.yaml`` often comes with a
freshly cloned repository, so a file is *trusted* only if it is the packaged default (or
has its exact bytes), lives in the user config dir, is named by ``$TIMMY_PROVIDERS`` or by
an explicit path, or was trusted with ``%llm trust`` (path and sha256 in ``trust.py``'s
store). An untrusted file loads without the parts that run code, read the environment or
choose which of the user's files to write: ``launch:`` sections, the quota
``command``/``callable`` and the ``cache:`` path, mode and size are dropped and no
``${VAR}`` is expanded (a ``${VAR:-default}`` takes its default; an unexpanded ``api_key``
leaves its provider "not configured", any other unexpanded provider field disables that
provider).
``Config.held_back`` lists what was dropped; ``Config.held_back_line`` says it in one line.

``${VAR}`` and ``${VAR:-default}`` are expanded in every string of a trusted file. An
unresolved variable is an error in an enabled provider, except in ``api_key`` where it
leaves the provider "not configured" (shown, never used); in a disabled provider it is
ignored. In every file, a variable whose name says secret (``secrets.is_secret_name``:
``*_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_PWD``, ``*_AUTH``...) may only be used in ``api_key`` and
``headers``: a key in a URL or a command would leave the machine or show in a process list.

One validation boundary: numbers are finite, of their type (never a bool or quoted text)
and within sane bounds; URLs are parsed (http/https, a host, a valid port, no whitespace,
control characters or fragment); duplicate YAML keys are rejected. Every problem is one
line naming the file, the provider and the field (``ConfigError``); unknown keys are
warnings, kept in ``Config.warnings``. Every secret the file holds is registered with
``secrets.REDACT`` before validation, so no error can echo one.
"""

from __future__ import annotations

import contextvars
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
)

from timmy_magic.providers import registry as registry
from timmy_magic.config import trust as trust
from timmy_magic.model.errors import ConfigError
from timmy_magic.privacy.redact import REDACT, display_url, get_logger, is_secret_name, mask

log = get_logger("timmy_magic.config")
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000
"""Values after YAML aliases are expanded: a small file of nested aliases ("billion
laughs") would otherwise take forever to walk and validate."""
ENV_VAR = "TIMMY_PROVIDERS"
TRUST_HINT = "run %llm trust to allow"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""A ${VAR} with such a name holds a secret: it may only go to api_key and headers."""
_KEY_SHAPED = re.compile(r"(sk|pk|rk)[-_][^\s'\"]{8,}|[A-Za-z0-9_-]{32,}")
"""A value an error must not echo: an API key pasted into the wrong field."""
_INTERNAL = {"source", "warnings", "trusted", "trusted_by", "held_back", "missing_env"}
"""Fields the loader sets: a file cannot set them (``trusted: true`` is just ignored)."""
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
DAY = 86_400.0


class _Expanded(str):
    """A string that came out of ``${VAR}`` expansion. Environment variables are text, so
    only these may be read as a number or a flag (``local_only: ${X:-false}``); text the
    file itself quotes may not (``enabled: "yes"``, ``priority: "3"``)."""


# ------------------------------------------------------------------ value types


def _number(lo: float, hi: float, *, integer: bool = False, unit: str = "",
            optional: bool = False) -> PlainValidator:
    """A finite number in [lo, hi]: never a bool, never quoted text."""
    what = "an integer" if integer else "a number"
    bounds = f"must be from {lo:g} to {hi:g}{unit}"

    def check(value: object) -> int | float | None:
        if value is None and optional:
            return None
        if isinstance(value, _Expanded):
            value = _read_number(value, integer)
        if isinstance(value, bool):
            raise ValueError(f"must be {what}, not true/false")
        if isinstance(value, str):
            raise ValueError(f"must be {what}, not text{_text_hint(value)}")
        if not isinstance(value, int) and (integer or not isinstance(value, float)):
            raise ValueError(f"must be {what}, not {_KINDS.get(type(value), 'that')}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number {bounds.removeprefix('must be ')}")
        if not lo <= value <= hi:
            raise ValueError(bounds)
        return value if integer else float(value)

    return PlainValidator(check)


_KINDS = {list: "a list", dict: "a mapping", type(None): "null", float: "a fraction"}


def _read_number(text: str, integer: bool) -> object:
    try:
        return int(text) if integer or text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        return str(text)


def _text_hint(text: str) -> str:
    try:
        float(text)
    except ValueError:
        return ""
    if "e" in text.lower() and "." not in text:
        return " (YAML reads an exponent without a dot as text: write 1.0e+3, not 1e3)"
    return " (remove the quotes)"


def _flag(value: object) -> bool:
    if isinstance(value, _Expanded) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _no_control(text: str) -> str:
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (has {bad!r})")
    return text


def _single_word(text: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must not contain spaces or control characters")
    return text


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


def _http_url(url: str) -> str:
    if len(url) > 2048:
        raise ValueError("is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if any(c.isspace() or not c.isprintable() for c in url):  # urlsplit drops CR/LF/tab
        raise ValueError("must be a URL without spaces or control characters")
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host (http://HOST:PORT/...)")
    if port == 0:
        raise ValueError("has port 0")
    if "#" in url:
        raise ValueError("must not have a #fragment")
    return url


def _api_key(key: SecretStr | None) -> SecretStr | None:
    if key is None:
        return None
    value = key.get_secret_value().strip()
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")
    return SecretStr(value) if value else None


def _header_name(name: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}", name):
        raise ValueError("is not a valid HTTP header name")
    return name


def _header_value(value: str) -> str:
    if len(value) > 8192 or any(c in "\r\n\0" or (ord(c) < 32 and c != "\t") for c in value):
        raise ValueError("must be one line of at most 8192 characters, no control characters")
    return value


Seconds = Annotated[float, _number(0.01, DAY, unit=" seconds")]
Delay = Annotated[float, _number(0, DAY, unit=" seconds")]
Flag = Annotated[bool, PlainValidator(_flag)]
Url = Annotated[str, AfterValidator(_http_url)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_control)]
Word = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_single_word)]
Tokens = Annotated[int | None, _number(1, 100_000_000, integer=True, optional=True)]
Price = Annotated[float, _number(0, 10_000, unit=" USD per 1k tokens")]
Arg = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]


# ------------------------------------------------------------------ models


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
    failure_threshold: Annotated[int, _number(1, 1_000_000, integer=True)] = 3
    recovery_timeout: Seconds = 30.0
    half_open_max_calls: Annotated[int, _number(1, 1000, integer=True)] = 1


class CascadeConfig(_Model):
    timeout_seconds: Seconds = 120.0
    connect_timeout_seconds: Seconds = 3.0
    first_token_timeout_seconds: Seconds = 30.0
    idle_timeout_seconds: Seconds = 30.0
    health_timeout_seconds: Seconds = 2.0
    health_interval_seconds: Seconds = 30.0
    max_retries_per_provider: Annotated[int, _number(0, 100, integer=True)] = 2
    retry_delay_seconds: Delay = 0.5
    max_retry_delay_seconds: Delay = 8.0
    retry_after_cap_seconds: Delay = 30.0
    default_max_tokens: Tokens = 1024
    """Output cap when neither the request nor the model sets one (a base model may never
    stop by itself); null for no cap."""
    circuit_breaker: BreakerConfig = BreakerConfig()


class QuotaConfig(_Model):
    command: Annotated[list[Arg], Field(min_length=1)] | None = None
    callable: Annotated[str, AfterValidator(lambda s: _callable_path(s))] | None = None
    ttl_seconds: Delay = 60.0
    timeout_seconds: Seconds = 2.0
    closed_tiers: list[Literal["burst", "active", "resting"]] = ["resting"]


def _callable_path(path: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", path):
        raise ValueError("must be 'package.module:function'")
    return path


class GateConfig(_Model):
    local_only: Flag = False
    daily_budget_usd: Annotated[float | None,
                                _number(0, 1e9, unit=" USD", optional=True)] = None
    quota: QuotaConfig | None = None


def _api_mode(value: object) -> str:
    if isinstance(value, str) and value.strip() in ("chat", "completion"):
        return value.strip()
    raise ValueError("must be chat or completion")


MAX_STOPS = 16


def _stops(value: object) -> tuple[str, ...]:
    """One stop string or a list of them: each 1 to 64 characters, no NUL (newlines are
    allowed: "\n\n" is the usual stop of a base model)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_STOPS:
        raise ValueError(f"must be a string or a list of 1 to {MAX_STOPS} strings")
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= 64 or "\0" in item:
            raise ValueError(f"must hold strings of 1 to 64 characters without NUL (got "
                             f"{_shown_input(item)})")
    return tuple(str(i) for i in items)


_PARAM_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_OWN_FIELD = {"temperature", "stop", "max_tokens", "max_completion_tokens"}
_ROUTER_SET = {"model", "prompt", "messages", "stream", "stream_options", "n"}
MAX_PARAMS = 32


def _param_value(key: str, value: object) -> Any:
    if isinstance(value, _Expanded):
        value = _read_number(value, False)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 1e15:
            raise ValueError(f"'{key}' must be a finite number (got {value!r})")
        return value
    if isinstance(value, str):
        if len(value) > 4096 or "\0" in value:
            raise ValueError(f"'{key}' must be text of at most 4096 characters, no NUL")
        return str(value)
    raise ValueError(f"'{key}' must be a number, text, true/false, null or a list of "
                     f"them, not {_KINDS.get(type(value), type(value).__name__)}")


def _params(value: object) -> dict[str, Any]:
    """Extra fields for the request body of an OpenAI-compatible server, as the server
    names them (llama-server ``repeat_penalty``, vLLM ``repetition_penalty``, ``top_k``,
    ``min_p``, ``seed``...): JSON scalars or short lists of them, nothing nested."""
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of body fields (repeat_penalty: 1.1, ...)")
    if len(value) > MAX_PARAMS:
        raise ValueError(f"has more than {MAX_PARAMS} fields")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _PARAM_KEY.fullmatch(key):
            raise ValueError(f"{_shown_input(key)} is not a field name (letters, digits, _)")
        if key in _OWN_FIELD:
            raise ValueError(f"'{key}' has its own field: set {key} on the model instead")
        if key in _ROUTER_SET:
            raise ValueError(f"'{key}' is set by the router, not by params")
        if isinstance(item, list):
            if len(item) > 64:
                raise ValueError(f"'{key}' is a list of more than 64 items")
            out[key] = [_param_value(key, i) for i in item]
        else:
            out[key] = _param_value(key, item)
    return out


class ModelConfig(_Model):
    name: Text
    default: Flag = False
    context_window: Tokens = None
    capabilities: list[Text] = []
    price_per_1k_input: Price = 0.0
    price_per_1k_output: Price = 0.0
    max_tokens: Tokens = None
    """Default output cap for this model when a request sets none."""
    mode: Annotated[Literal["chat", "completion"], PlainValidator(_api_mode)] = "chat"
    """``chat``: asked through the chat API (messages). ``completion``: through the plain
    completions API (``/v1/completions``, a prompt): a base model with no chat template
    (the embedded Gemma 3 270M) answers well only this way. The name LiteLLM uses."""
    temperature: Annotated[float | None, _number(0, 2, optional=True)] = None
    """Default temperature for this model when a request sets none."""
    stop: Annotated[tuple[str, ...], BeforeValidator(_stops)] = ()
    """Stop strings sent with every request to this model (OpenAI-compatible types)."""
    params: Annotated[dict[str, Any], PlainValidator(_params)] = {}
    """Extra request-body fields for an OpenAI-compatible server, under the server's own
    names (``repeat_penalty: 1.1`` for llama-server); other types ignore them."""


def _env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError("is not an environment variable name")
    return name


class LaunchConfig(_Model):
    command: Annotated[list[Arg], Field(min_length=1)]
    env: dict[Annotated[str, AfterValidator(_env_name)], Arg] = {}
    cwd: Arg | None = None
    ready_timeout: Seconds = 120.0
    idle_timeout: Annotated[float | None, _number(0.01, DAY, unit=" seconds",
                                                  optional=True)] = None


class ProviderConfig(_Model):
    name: Word
    type: Word
    enabled: Flag = True
    priority: Annotated[int, _number(-1_000_000, 1_000_000, integer=True)] = 100
    base_url: Url | None = Field(default=None, alias="url")
    api_key: Annotated[SecretStr | None, AfterValidator(_api_key)] = None
    cloud: Annotated[bool | None, PlainValidator(lambda v: None if v is None else _flag(v))] \
        = None
    models: list[ModelConfig] = []
    replicas: list[Url] = []
    headers: dict[Annotated[str, AfterValidator(_header_name)],
                  Annotated[str, AfterValidator(_header_value)]] = {}
    launch: LaunchConfig | None = None
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
    def kind(self) -> registry.ProviderKind:
        kind = registry.get(self.type)
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
    """The answer cache (``cache.py``): off by default; ``$TIMMY_CACHE_MODE`` overrides
    ``mode`` and ``$TIMMY_CACHE_PATH`` ``path``. An untrusted file may not set ``path``,
    ``mode`` or ``max_mb`` (``CACHE_HELD``): a cloned repository's file would otherwise
    choose which of the user's files the cache opens, turn recording on, or evict the
    user's recorded answers with a tiny cap."""

    path: Arg | None = None
    mode: Annotated[Literal["off", "on", "replay"], PlainValidator(_cache_mode)] = "off"
    ttl_days: Annotated[float | None, _number(0.0001, 36_500, unit=" days",
                                              optional=True)] = None
    max_mb: Annotated[float, _number(0.01, 1_000_000, unit=" MB")] = 200.0


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


# ------------------------------------------------------------------ file search and trust


def packaged_default() -> Path:
    return Path(__file__).resolve().parents[1] / "providers.yaml"


def user_config_path() -> Path:
    return trust.config_dir() / "providers.yaml"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use, by the documented search order."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / "providers.yaml", user_config_path()):
        if candidate.is_file():
            return candidate
    return packaged_default()


_SEARCHED: contextvars.ContextVar[bool] = contextvars.ContextVar("timmy_searched",
                                                                 default=False)


@contextmanager
def found_by_search() -> Iterator[None]:
    """Inside, a path given to ``load_config`` counts as found by the search, not named
    by the user, so naming it grants no trust. ``%llm reload`` (no PATH) and ``%llm
    untrust`` re-read a searched file through ``Router.reload(path)`` this way."""
    token = _SEARCHED.set(True)
    try:
        yield
    finally:
        _SEARCHED.reset(token)


def trust_reason(path: Path, data: bytes, *, named: bool = False) -> str:
    """Why the file at ``path`` holding ``data`` is trusted, or "" if it is not."""
    real = path.expanduser().resolve()
    if trust.digest(data) == _packaged_digest():
        return "the packaged default"
    home = trust.config_dir()
    if any(p.is_relative_to(d) for p in (path.expanduser().absolute(), real)
           for d in (home, home.resolve())):
        return "in the user config dir"
    env = os.environ.get(ENV_VAR)
    if env and Path(env).expanduser().resolve() == real:
        return f"named by ${ENV_VAR}"
    if named:
        return "named explicitly"
    if trust.is_trusted(real, trust.digest(data)):
        return "trusted with %llm trust"
    return ""


def _packaged_digest() -> str:
    return trust.digest(packaged_default().read_bytes())


def load_config(path: str | os.PathLike[str] | None = None, *,
                named: bool | None = None) -> Config:
    """Load and validate providers.yaml (``path``, else the search). ``named``: the user
    named ``path`` (trusting it); by default true when a path is given, outside
    ``found_by_search()``."""
    p = find_config(path)
    if p.exists() and not p.is_file():  # a FIFO would block, /dev/zero never end
        raise ConfigError("is not a regular file", file=str(p))
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(p)) from None
    if named is None:
        named = path is not None and not _SEARCHED.get()
    reason = trust_reason(p, data, named=named)
    cfg = parse_config(data, source=str(p), trusted=bool(reason))
    return cfg.model_copy(update={"trusted_by": reason})


# ------------------------------------------------------------------ parsing


@dataclass
class _Expansion:
    source: str
    env: dict[str, str]
    trusted: bool
    providers: list[Any]
    unresolved: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    """(path, VAR) of variables with no value (in an untrusted file: every one)."""
    held: list[str] = field(default_factory=list)
    withheld: dict[int, str] = field(default_factory=dict)
    """Untrusted: provider index -> the variable left unexpanded in it (not in api_key)."""
    nodes: int = 0

    def where(self, path: tuple[Any, ...]) -> dict[str, str | None]:
        """ConfigError's file, provider and field for a path into the file."""
        if path[:1] == ("providers",) and len(path) > 2:
            return {"file": self.source, "provider": _provider_name(self.providers, path[1]),
                    "field": ".".join(map(str, path[2:]))}
        return {"file": self.source, "provider": None, "field": ".".join(map(str, path))}


def _expand(node: Any, path: tuple[Any, ...], out: _Expansion) -> Any:
    out.nodes += 1
    if out.nodes > MAX_CONFIG_NODES:
        raise ConfigError(f"more than {MAX_CONFIG_NODES} values once YAML aliases are "
                          "expanded (an alias bomb?)", file=out.source)
    if isinstance(node, str):
        if "${" not in node:
            return node
        return _Expanded(_VAR.sub(lambda m: _substitute(m, path, out), node))
    if isinstance(node, dict):
        return {k: _expand(v, (*path, k), out) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*path, i), out) for i, v in enumerate(node)]
    return node


def _substitute(m: re.Match[str], path: tuple[Any, ...], out: _Expansion) -> str:
    name, default = m.group(1), m.group(2)
    if is_secret_name(name, env=True) and not (path[:1] == ("providers",) and len(path) > 2
                                         and path[2] in ("api_key", "headers")):
        raise ConfigError(f"${{{name}}} looks like a secret: it may only be used in api_key "
                          "or headers, never in a URL, a command or any other field",
                          **out.where(path))
    value = out.env.get(name)
    if not out.trusted:
        if default is None:
            out.unresolved.append((path, name))
            return m.group()  # shown as written: the provider it is in is disabled
        if value and value != default:
            out.held.append(f"${{{name}}}{_in_provider(path, out)} (its default used)")
        return default
    if value:
        if is_secret_name(name, env=True):
            REDACT.add([value])
        return value
    if default is not None:
        return default
    out.unresolved.append((path, name))
    return ""


def _in_provider(path: tuple[Any, ...], out: _Expansion) -> str:
    if path[:1] == ("providers",) and len(path) > 1:
        return f" in '{_provider_name(out.providers, path[1])}'"
    return f" in {'.'.join(map(str, path))}"


def parse_config(data: bytes | str, *, source: str = "providers.yaml",
                 env: dict[str, str] | None = None, trusted: bool = True) -> Config:
    """Parse and validate providers.yaml text. Raises ConfigError (one line).
    ``trusted=False``: no launch, no quota command or callable, no ``${VAR}``."""
    env = dict(os.environ) if env is None else env
    try:
        return _parse(data, source, env, trusted)
    except RecursionError:  # PyYAML's composer and our walk recurse once per level
        raise ConfigError("nested too deeply to read", file=source) from None


def _parse(data: bytes | str, source: str, env: dict[str, str], trusted: bool) -> Config:
    raw = _load_yaml(data, source)
    provider_list = raw.get("providers") or []
    if not isinstance(provider_list, list):
        raise ConfigError("must be a list of providers", file=source, field="providers")
    warnings = _drop_internal(raw, provider_list, source)
    exp = _Expansion(source, env, trusted, provider_list)
    if not trusted:
        _hold_back_code(raw, exp)
    raw = _expand(raw, (), exp)
    exp.providers = provider_list = raw.get("providers") or []
    _check_unresolved(exp, provider_list)
    _register_secrets(provider_list)  # before any error can echo one
    cfg = _validate(raw, exp)
    cfg = _check_semantics(cfg, source, warnings)
    REDACT.add(p.key() for p in cfg.providers)
    for w in cfg.warnings:
        log.warning(w)
    held = tuple(dict.fromkeys(exp.held))
    cfg = cfg.model_copy(update={"trusted": trusted, "held_back": held})
    if held:
        log.info(cfg.held_back_line)
    return cfg


def _validate(raw: dict[str, Any], exp: _Expansion) -> Config:
    """Config.model_validate, one line on error. In an untrusted file, a provider whose
    unexpanded ``${VAR}`` makes it invalid (``port: ${PORT}``) is left out, and said so."""
    while True:
        try:
            return Config.model_validate({**raw, "source": exp.source})
        except ValidationError as exc:
            bad = {e["loc"][1] for e in exc.errors() if e["loc"][:1] == ("providers",)
                   and len(e["loc"]) > 1 and e["loc"][1] in exp.withheld}
            if not bad:
                raise _one_line(exc, raw, exp.source) from None
        for i in sorted(bad, reverse=True):
            name = _provider_name(raw["providers"], i)
            exp.held = [h for h in exp.held if not h.endswith(f" in '{name}' (disabled)")]
            exp.held.append(f"${{{exp.withheld.pop(i)}}} in '{name}' (left out)")
            del raw["providers"][i]
            exp.withheld = {j - (j > i): v for j, v in exp.withheld.items()}


def _drop_internal(raw: dict[str, Any], providers: list[Any], source: str) -> list[str]:
    """Remove the fields only the loader sets; each one found is a warning."""
    out = []
    for key in _INTERNAL & set(raw):
        del raw[key]
        out.append(f"{source}: unknown key '{key}' ignored")
    for i, entry in enumerate(providers):
        if isinstance(entry, dict) and entry.pop("missing_env", None) is not None:
            out.append(f"{source}: provider '{_provider_name(providers, i)}': unknown key "
                       "'missing_env' ignored")
    return out


CACHE_HELD = ("path", "mode", "max_mb")
"""The ``cache:`` keys an untrusted file may not set (``CacheConfig``)."""


def _hold_back_code(raw: dict[str, Any], out: _Expansion) -> None:
    """An untrusted file: drop launch sections, the quota's command or callable, and the
    cache's path, mode and size (``CACHE_HELD``)."""
    for i, entry in enumerate(out.providers):
        if isinstance(entry, dict) and entry.get("launch") is not None:
            out.held.append(f"launch of '{_provider_name(out.providers, i)}'")
        if isinstance(entry, dict):
            entry.pop("launch", None)
    for gate_key in ("cloud_gate", "metabolic"):
        gate = raw.get(gate_key)
        if not isinstance(gate, dict) or not isinstance(gate.get("quota"), dict):
            continue
        quota = gate["quota"]
        dropped = [k for k in ("command", "callable") if quota.pop(k, None) is not None]
        out.held += [f"quota {k}" for k in dropped]
        if dropped:
            del gate["quota"]  # nothing left to ask
    cache = raw.get("cache")
    if isinstance(cache, dict):
        asked = {k: cache.pop(k) for k in CACHE_HELD if k in cache}
        out.held += [f"cache {k}" for k, v in asked.items()
                     if v is not None and not (k == "mode" and v in (False, "off"))]


def _load_yaml(data: bytes | str, source: str) -> dict[str, Any]:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than the limit of {MAX_CONFIG_BYTES} bytes",
                          file=source)
    if isinstance(data, bytes):
        if b"\x00" in data:
            nul = data.index(b"\x00")
            raise ConfigError(f"is binary, not YAML text (NUL byte at offset {nul})",
                              file=source)
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"is not UTF-8 text (bad byte at offset {exc.start})",
                              file=source) from None
    try:
        raw = _safe_load(data, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {where}{problem}", file=source) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping, got {type(raw).__name__}",
                          file=source)
    return raw


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load``, rejecting duplicate keys. They are looked for in the composed
    node graph, before construction: ``SafeConstructor.construct_mapping`` sees a mapping
    after ``<<`` merges were flattened into it (where repeating a key is the point)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _reject_duplicate_keys(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(root: yaml.Node, source: str) -> None:
    merge = "tag:yaml.org,2002:merge"
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, tuple[Any, ...], str | None]] = [(root, (), None)]
    while todo:  # iterative: a deep file must not exhaust the stack here
        node, path, provider = todo.pop()
        if id(node) in seen_nodes:
            continue  # an alias: walked once (an alias bomb stays small here)
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                label = provider
                if path == ("providers",):
                    label = _node_name(item) or f"#{i + 1}"
                todo.append((item, (*path, i), label))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == merge:
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first_line:
                    rel = path[2:] if provider else path
                    raise ConfigError(
                        f"duplicate key {key.value[:60]!r} at line {line} (first at line "
                        f"{first_line[key.tag, key.value]})", file=source, provider=provider,
                        field=".".join(map(str, (*rel, key.value[:60]))))
                first_line[key.tag, key.value] = line
                todo.append((value, (*path, key.value), provider))


def _node_name(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "name" \
                    and isinstance(value, yaml.ScalarNode) and _clean_name(value.value):
                return str(value.value)
    return None


def _clean_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable() \
        and not any(c.isspace() for c in name)


def _provider_name(providers: list[Any], index: Any) -> str | None:
    if isinstance(index, int) and index < len(providers):
        entry = providers[index]
        if isinstance(entry, dict) and _clean_name(entry.get("name")):
            return str(entry["name"])
        return f"#{index + 1}"
    return None


def _disabled(entry: dict[str, Any]) -> bool:
    enabled = entry.get("enabled", True)
    return enabled is False or (isinstance(enabled, _Expanded)
                                and enabled.strip().lower() in _FALSE)


def _check_unresolved(exp: _Expansion, providers: list[Any]) -> None:
    for path, var in exp.unresolved:
        if path[:1] != ("providers",) or len(path) < 3:
            why = "is not set" if exp.trusted else f"is not expanded: the file is not " \
                f"trusted ({TRUST_HINT}, or give a default with ${{{var}:-value}})"
            raise ConfigError(f"${{{var}}} {why}", **exp.where(path))
        entry = providers[path[1]]
        if not exp.trusted and path[2] != "api_key":
            exp.withheld.setdefault(path[1], var)
        if not isinstance(entry, dict) or _disabled(entry):
            continue
        held = f"${{{var}}}{_in_provider(path, exp)}"
        if path[2] == "api_key":
            entry["api_key"] = None
            entry["missing_env"] = tuple(dict.fromkeys((*entry.get("missing_env", ()), var)))
            if not exp.trusted:
                exp.held.append(held)
            continue
        if not exp.trusted:
            entry["enabled"] = False
            exp.held.append(f"{held} (disabled)")
            continue
        raise ConfigError(f"${{{var}}} is not set (set it, give a default with "
                          f"${{{var}:-value}}, or disable the provider)", **exp.where(path))


def _register_secrets(providers: list[Any]) -> None:
    """Every secret a provider entry holds goes to REDACT, before validation can echo it:
    the api_key, every header value, URL passwords and secret query values."""
    for entry in providers:
        if not isinstance(entry, dict):
            continue
        key = entry.get("api_key")
        if isinstance(key, str | int | float) and not isinstance(key, bool):
            REDACT.add([str(key)])
        headers = entry.get("headers")
        for name, value in (headers.items() if isinstance(headers, dict) else ()):
            if isinstance(value, str):
                REDACT.add_header(str(name), value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                REDACT.add([str(value)])
        replicas = entry.get("replicas")
        urls = [entry.get("base_url"), entry.get("url"),
                *(replicas if isinstance(replicas, list) else [])]
        for url in urls:
            if isinstance(url, str):
                REDACT.add_url(url)


def _one_line(exc: ValidationError, raw: dict[str, Any], source: str) -> ConfigError:
    err = exc.errors()[0]
    loc = list(err["loc"])
    if loc[-1:] == ["[key]"]:  # a bad mapping key: name the mapping, the key is in "got"
        loc = loc[:-2]
    provider = None
    if loc[:1] == ["providers"] and len(loc) > 1:
        provider = _provider_name(raw.get("providers") or [], loc[1])
        loc = loc[2:]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required"
    elif "input" in err and not isinstance(err["input"], (dict, list)) \
            and f"got {err['input']!r}" not in msg and "api_key" not in loc:
        msg = f"{msg} (got {_shown_input(err['input'])})"
    msg = _KEY_SHAPED.sub(lambda m: mask(m.group()), msg)
    return ConfigError(REDACT(msg), file=source, provider=provider,
                       field=".".join(map(str, loc)) or None)


def _shown_input(value: object) -> str:
    text = repr(str(value) if isinstance(value, _Expanded) else value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_semantics(cfg: Config, source: str, warnings: list[str]) -> Config:
    seen: dict[str, int] = {}
    priorities: dict[int, str] = {}
    for p in cfg.providers:
        if p.name in seen:
            raise ConfigError("duplicate provider name (names must be unique)", file=source,
                              provider=p.name, field="name")
        seen[p.name] = 1
        if registry.get(p.type) is None:
            raise ConfigError(f"unknown type {p.type!r}; known types: "
                              f"{', '.join(registry.known())}", file=source, provider=p.name,
                              field="type")
        if not p.urls:
            raise ConfigError(f"type {p.type!r} has no default URL: set base_url",
                              file=source, provider=p.name, field="base_url")
        if sum(m.default for m in p.models) > 1:
            raise ConfigError("more than one model is marked default", file=source,
                              provider=p.name, field="models")
        if p.enabled and p.priority in priorities:
            warnings.append(f"{source}: provider '{p.name}' field 'priority': {p.priority} is "
                            f"also used by '{priorities[p.priority]}'; file order breaks the tie")
        if p.enabled:
            priorities.setdefault(p.priority, p.name)
        warnings += _unknown_keys(p, f"{source}: provider '{p.name}'")
    warnings += _unknown_keys(cfg, source)
    return cfg.model_copy(update={"warnings": tuple(warnings)})


def _unknown_keys(model: BaseModel, where: str) -> list[str]:
    out = [f"{where}: unknown key '{k}' ignored" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        child = getattr(model, name)
        kids = child if isinstance(child, list) else [child]
        for kid in kids:
            if isinstance(kid, BaseModel) and not isinstance(kid, ProviderConfig):
                label = f"{where} field '{name}'"
                out += _unknown_keys(kid, label)
    return out
