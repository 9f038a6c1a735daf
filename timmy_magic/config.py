"""providers.yaml -> validated, typed configuration.

Which file: an explicit path, else ``$TIMMY_PROVIDERS``, else ``./providers.yaml``, else the
user config dir (``platformdirs.user_config_dir("timmy-magic")/providers.yaml``), else the
default shipped inside the package.

``${VAR}`` and ``${VAR:-default}`` are expanded in every string. An unresolved variable is
an error in an enabled provider, except in ``api_key`` where it leaves the provider "not
configured" (shown, never used); in a disabled provider it is ignored.

Every problem is one line naming the file, the provider and the field (``ConfigError``);
unknown keys are warnings, kept in ``Config.warnings``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
)

from . import registry
from .errors import ConfigError
from .secrets import REDACT, get_logger, mask

log = get_logger("timmy_magic.config")
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000
"""Values after YAML aliases are expanded: a small file of nested aliases ("billion
laughs") would otherwise take forever to walk and validate."""
ENV_VAR = "TIMMY_PROVIDERS"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_VAR = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
"""A ${VAR} with such a name holds a secret wherever it is used (even a wrong field)."""
_KEY_SHAPED = re.compile(r"(sk|pk|rk)[-_][^\s'\"]{8,}|[A-Za-z0-9_-]{32,}")
"""A value an error must not echo: an API key pasted into the wrong field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class BreakerConfig(_Model):
    failure_threshold: PositiveInt = 3
    recovery_timeout: PositiveFloat = 30.0
    half_open_max_calls: PositiveInt = 1


class CascadeConfig(_Model):
    timeout_seconds: PositiveFloat = 120.0
    connect_timeout_seconds: PositiveFloat = 3.0
    first_token_timeout_seconds: PositiveFloat = 30.0
    idle_timeout_seconds: PositiveFloat = 30.0
    health_timeout_seconds: PositiveFloat = 2.0
    health_interval_seconds: PositiveFloat = 30.0
    max_retries_per_provider: NonNegativeInt = 2
    retry_delay_seconds: NonNegativeFloat = 0.5
    max_retry_delay_seconds: NonNegativeFloat = 8.0
    retry_after_cap_seconds: NonNegativeFloat = 30.0
    default_max_tokens: PositiveInt | None = 1024
    """Output cap when neither the request nor the model sets one (a base model may never
    stop by itself); null for no cap."""
    circuit_breaker: BreakerConfig = BreakerConfig()


class QuotaConfig(_Model):
    command: list[str] | None = None
    callable: str | None = None
    ttl_seconds: NonNegativeFloat = 60.0
    timeout_seconds: PositiveFloat = 2.0
    closed_tiers: list[Literal["burst", "active", "resting"]] = ["resting"]


class GateConfig(_Model):
    local_only: bool = False
    daily_budget_usd: NonNegativeFloat | None = None
    quota: QuotaConfig | None = None


class ModelConfig(_Model):
    name: str = Field(min_length=1)
    default: bool = False
    context_window: PositiveInt | None = None
    capabilities: list[str] = []
    price_per_1k_input: NonNegativeFloat = 0.0
    price_per_1k_output: NonNegativeFloat = 0.0
    max_tokens: PositiveInt | None = None
    """Default output cap for this model when a request sets none."""


class LaunchConfig(_Model):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    cwd: str | None = None
    ready_timeout: PositiveFloat = 120.0
    idle_timeout: PositiveFloat | None = None


class ProviderConfig(_Model):
    name: str = Field(min_length=1)
    type: str
    enabled: bool = True
    priority: int = 100
    base_url: str | None = Field(default=None, alias="url")
    api_key: SecretStr | None = None
    cloud: bool | None = None
    models: list[ModelConfig] = []
    replicas: list[str] = []
    headers: dict[str, str] = {}
    launch: LaunchConfig | None = None
    missing_env: tuple[str, ...] = ()
    """Environment variables the api_key needed but were unset ("not configured")."""

    @field_validator("base_url", "replicas")
    @classmethod
    def _http_url(cls, v: Any) -> Any:
        for url in ([v] if isinstance(v, str) else v or []):
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
        return v

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
    def default_model(self) -> str | None:
        for m in self.models:
            if m.default:
                return m.name
        return self.models[0].name if self.models else None

    def model(self, name: str | None) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None


class Config(_Model):
    cascade: CascadeConfig = CascadeConfig()
    cloud_gate: GateConfig = Field(default=GateConfig(), alias="metabolic")
    providers: list[ProviderConfig] = []
    source: str = "<defaults>"
    warnings: tuple[str, ...] = ()

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)


# ------------------------------------------------------------------ file search


def packaged_default() -> Path:
    return Path(__file__).with_name("providers.yaml")


def user_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("timmy-magic")) / "providers.yaml"


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


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
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
    return parse_config(data, source=str(p))


# ------------------------------------------------------------------ parsing


@dataclass
class _Expansion:
    source: str = "providers.yaml"
    unresolved: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    nodes: int = 0


def _expand(node: Any, path: tuple[Any, ...], env: dict[str, str], out: _Expansion) -> Any:
    out.nodes += 1
    if out.nodes > MAX_CONFIG_NODES:
        raise ConfigError(f"more than {MAX_CONFIG_NODES} values once YAML aliases are "
                          "expanded (an alias bomb?)", file=out.source)
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if env.get(name):
                if _SECRET_VAR.search(name):
                    REDACT.add([env[name]])
                return env[name]
            if default is not None:
                return default
            out.unresolved.append((path, name))
            return ""
        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, (*path, k), env, out) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*path, i), env, out) for i, v in enumerate(node)]
    return node


def parse_config(data: bytes | str, *, source: str = "providers.yaml",
                 env: dict[str, str] | None = None) -> Config:
    """Parse and validate providers.yaml text. Raises ConfigError (one line)."""
    env = dict(os.environ) if env is None else env
    try:
        return _parse(data, source, env)
    except RecursionError:  # PyYAML's composer and our walk recurse once per level
        raise ConfigError("nested too deeply to read", file=source) from None


def _parse(data: bytes | str, source: str, env: dict[str, str]) -> Config:
    raw = _load_yaml(data, source)
    exp = _Expansion(source)
    raw = _expand(raw, (), env, exp)
    provider_list = raw.get("providers") or []
    if not isinstance(provider_list, list):
        raise ConfigError("must be a list of providers", file=source, field="providers")
    _check_unresolved(exp, provider_list, source)
    REDACT.add(str(p["api_key"]) for p in provider_list  # before any error can echo one
               if isinstance(p, dict) and p.get("api_key") is not None)
    try:
        cfg = Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise _one_line(exc, raw, source) from None
    cfg = _check_semantics(cfg, source)
    REDACT.add(p.key() for p in cfg.providers)
    for w in cfg.warnings:
        log.warning(w)
    return cfg


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
        raw = yaml.safe_load(data)
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


def _provider_name(providers: list[Any], index: Any) -> str | None:
    if isinstance(index, int) and index < len(providers):
        entry = providers[index]
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
            return str(entry["name"])
        return f"#{index + 1}"
    return None


def _check_unresolved(exp: _Expansion, providers: list[Any], source: str) -> None:
    for path, var in exp.unresolved:
        if path[:1] != ("providers",) or len(path) < 3:
            raise ConfigError(f"${{{var}}} is not set", file=source,
                              field=".".join(map(str, path)))
        entry = providers[path[1]]
        if not isinstance(entry, dict) or entry.get("enabled", True) is False:
            continue
        if path[2] == "api_key":
            entry["api_key"] = None
            entry["missing_env"] = tuple({*entry.get("missing_env", ()), var})
            continue
        raise ConfigError(f"${{{var}}} is not set (set it, give a default with "
                          f"${{{var}:-value}}, or disable the provider)", file=source,
                          provider=_provider_name(providers, path[1]),
                          field=".".join(map(str, path[2:])))


def _one_line(exc: ValidationError, raw: dict[str, Any], source: str) -> ConfigError:
    err = exc.errors()[0]
    loc = list(err["loc"])
    provider = None
    if loc[:1] == ["providers"] and len(loc) > 1:
        provider = _provider_name(raw.get("providers") or [], loc[1])
        loc = loc[2:]
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    elif "input" in err and not isinstance(err["input"], (dict, list)) \
            and f"got {err['input']!r}" not in msg and "api_key" not in loc:
        msg = f"{msg} (got {err['input']!r})"
    msg = _KEY_SHAPED.sub(lambda m: mask(m.group()), msg)
    return ConfigError(REDACT(msg), file=source, provider=provider,
                       field=".".join(map(str, loc)) or None)


def _check_semantics(cfg: Config, source: str) -> Config:
    warnings: list[str] = []
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
