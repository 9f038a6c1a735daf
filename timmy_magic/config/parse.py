"""providers.yaml text -> a validated ``Config``, in steps:

    safe_yaml.load_yaml   bytes -> a mapping (size, encoding, duplicate keys)
    _drop_internal        the fields only the loader sets (``trusted: true`` is ignored)
    hold_back             untrusted: no launch, quota command/callable, cache path/mode/size
    expand.expand         ``${VAR}``; then expand.check_unresolved settles the unset ones
    _register_secrets     every secret the file holds goes to REDACT, before any error
    _validate             the pydantic models, one ``ConfigError`` line on error
    _check_semantics      unique names, known types, a URL, one default model; warnings

Unknown keys are warnings, kept in ``Config.warnings``; ``Config.held_back`` lists what an
untrusted file asked for and did not get.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ValidationError

from timmy_magic.config import provider_types
from timmy_magic.config.errors import one_line, provider_name
from timmy_magic.config.expand import Expansion, check_unresolved, expand
from timmy_magic.config.safe_yaml import load_yaml
from timmy_magic.config.schema import Config, ProviderConfig
from timmy_magic.model.errors import ConfigError
from timmy_magic.privacy.redact import REDACT, get_logger

log = get_logger("timmy_magic.config")
_INTERNAL = {"source", "warnings", "trusted", "trusted_by", "held_back", "missing_env"}
"""Fields the loader sets: a file cannot set them (``trusted: true`` is just ignored)."""
CACHE_HELD = ("path", "mode", "max_mb")
"""The ``cache:`` keys an untrusted file may not set (``CacheConfig``)."""


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
    raw = load_yaml(data, source)
    provider_list = raw.get("providers") or []
    if not isinstance(provider_list, list):
        raise ConfigError("must be a list of providers", file=source, field="providers")
    warnings = _drop_internal(raw, provider_list, source)
    exp = Expansion(source, env, trusted, provider_list)
    if not trusted:
        hold_back(raw, exp)
    raw = expand(raw, (), exp)
    exp.providers = provider_list = raw.get("providers") or []
    check_unresolved(exp, provider_list)
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


def _drop_internal(raw: dict[str, Any], providers: list[Any], source: str) -> list[str]:
    """Remove the fields only the loader sets; each one found is a warning."""
    out = []
    for key in _INTERNAL & set(raw):
        del raw[key]
        out.append(f"{source}: unknown key '{key}' ignored")
    for i, entry in enumerate(providers):
        if isinstance(entry, dict) and entry.pop("missing_env", None) is not None:
            out.append(f"{source}: provider '{provider_name(providers, i)}': unknown key "
                       "'missing_env' ignored")
    return out


def hold_back(raw: dict[str, Any], out: Expansion) -> None:
    """An untrusted file: drop launch sections, the quota's command or callable, and the
    cache's path, mode and size (``CACHE_HELD``); each one dropped goes to ``out.held``."""
    for i, entry in enumerate(out.providers):
        if isinstance(entry, dict) and entry.get("launch") is not None:
            out.held.append(f"launch of '{provider_name(out.providers, i)}'")
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


def _validate(raw: dict[str, Any], exp: Expansion) -> Config:
    """Config.model_validate, one line on error. In an untrusted file, a provider whose
    unexpanded ``${VAR}`` makes it invalid (``port: ${PORT}``) is left out, and said so."""
    while True:
        try:
            return Config.model_validate({**raw, "source": exp.source})
        except ValidationError as exc:
            bad = {e["loc"][1] for e in exc.errors() if e["loc"][:1] == ("providers",)
                   and len(e["loc"]) > 1 and e["loc"][1] in exp.withheld}
            if not bad:
                raise one_line(exc, raw, exp.source) from None
        for i in sorted(bad, reverse=True):
            name = provider_name(raw["providers"], i)
            exp.held = [h for h in exp.held if not h.endswith(f" in '{name}' (disabled)")]
            exp.held.append(f"${{{exp.withheld.pop(i)}}} in '{name}' (left out)")
            del raw["providers"][i]
            exp.withheld = {j - (j > i): v for j, v in exp.withheld.items()}


def _check_semantics(cfg: Config, source: str, warnings: list[str]) -> Config:
    seen: dict[str, int] = {}
    priorities: dict[int, str] = {}
    for p in cfg.providers:
        if p.name in seen:
            raise ConfigError("duplicate provider name (names must be unique)", file=source,
                              provider=p.name, field="name")
        seen[p.name] = 1
        if provider_types.get(p.type) is None:
            raise ConfigError(f"unknown type {p.type!r}; known types: "
                              f"{', '.join(provider_types.known())}", file=source,
                              provider=p.name, field="type")
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
