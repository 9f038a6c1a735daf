"""providers.yaml -> validated, typed configuration: the public face of the config layer.

The layer reads files and the environment and knows no provider code. Its modules:

    files.py           which file (explicit, $TIMMY_PROVIDERS, ./, user dir, packaged),
                       whether it is trusted, load_config
    trust.py           the store of files trusted with %llm trust
    parse.py           parse_config: text -> Config, holding back what an untrusted file
                       may not set
    safe_yaml.py       the YAML reader: size, encoding, duplicate keys, aliases
    expand.py          ${VAR} and ${VAR:-default}; secret-named variables stay in keys
    schema.py          the pydantic models (Config, ProviderConfig, CacheConfig...)
    values.py          the checked field types: numbers, flags, URLs, headers, params
    provider_types.py  what each provider ``type:`` means, as plain data (and plugins)
    errors.py          one ConfigError line naming the file, the provider and the field

Every problem is one ``ConfigError`` line; unknown keys are warnings in
``Config.warnings``; every secret the file holds is registered with ``REDACT`` before
validation, so no error can echo one.
"""

from __future__ import annotations

from timmy_magic.config import trust as trust
from timmy_magic.config.errors import TRUST_HINT
from timmy_magic.config.expand import MAX_CONFIG_NODES
from timmy_magic.config.files import (
    ENV_VAR,
    find_config,
    found_by_search,
    load_config,
    packaged_default,
    trust_reason,
    user_config_path,
)
from timmy_magic.config.parse import CACHE_HELD, parse_config
from timmy_magic.config.provider_types import ProviderType
from timmy_magic.config.safe_yaml import MAX_CONFIG_BYTES
from timmy_magic.config.schema import (
    BreakerConfig,
    CacheConfig,
    CascadeConfig,
    Config,
    GateConfig,
    LaunchConfig,
    ModelConfig,
    ProviderConfig,
    QuotaConfig,
)

__all__ = [
    "CACHE_HELD",
    "ENV_VAR",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "TRUST_HINT",
    "BreakerConfig",
    "CacheConfig",
    "CascadeConfig",
    "Config",
    "GateConfig",
    "LaunchConfig",
    "ModelConfig",
    "ProviderConfig",
    "ProviderType",
    "QuotaConfig",
    "find_config",
    "found_by_search",
    "load_config",
    "packaged_default",
    "parse_config",
    "trust",
    "trust_reason",
    "user_config_path",
]
