from pathlib import Path

import pytest

from timmy_magic.config import find_config, load_config, packaged_default, parse_config
from timmy_magic.model.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def parse(text, env=None):
    return parse_config(text, source="p.yaml", env=env or {})


def err(text, env=None) -> str:
    with pytest.raises(ConfigError) as ei:
        parse(text, env)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("p.yaml")
    return msg


def test_shipped_file_is_the_packaged_default_and_valid():
    assert (ROOT / "providers.yaml").read_text() == packaged_default().read_text()
    cfg = parse_config((ROOT / "providers.yaml").read_bytes(), env={})
    vm = cfg.provider("vllm-mlx")
    assert vm and vm.type == "vllm_mlx" and vm.enabled is False and vm.priority == 2
    assert not vm.is_cloud and cfg.provider("openai").is_cloud
    assert cfg.provider("openai").missing_env == ("OPENAI_API_KEY",)
    assert cfg.warnings == ()


def test_env_expansion_with_defaults():
    cfg = parse("providers:\n- {name: a, type: openai_compatible, base_url: '${H:-http://x:1}'}\n"
                "- {name: b, type: openai_compatible, base_url: '${H2}'}", env={"H2": "http://y:2"})
    assert cfg.providers[0].urls == ["http://x:1"] and cfg.providers[1].urls == ["http://y:2"]


def test_unresolved_var_in_enabled_provider_names_everything():
    msg = err("providers:\n- {name: a, type: openai_compatible, base_url: '${NOPE}'}")
    assert "provider 'a'" in msg and "field 'base_url'" in msg and "${NOPE}" in msg


def test_unresolved_var_in_disabled_provider_is_fine():
    cfg = parse("providers:\n- {name: a, type: openai_compatible, enabled: false,"
                " base_url: 'http://h:1', api_key: '${NOPE}'}")
    assert cfg.providers[0].enabled is False


def test_unresolved_key_leaves_provider_not_configured():
    cfg = parse("providers:\n- {name: o, type: openai, api_key: '${OPENAI_API_KEY}'}")
    assert cfg.providers[0].key() is None and cfg.providers[0].missing_env == ("OPENAI_API_KEY",)


@pytest.mark.parametrize("text,needles", [
    ("providers: [", ["YAML syntax error", "line"]),
    ("- a\n- b", ["top level must be a mapping"]),
    ("providers: {a: 1}", ["field 'providers'", "list"]),
    ("providers:\n- {name: a, type: warp_drive, base_url: 'http://h'}",
     ["provider 'a'", "field 'type'", "unknown type 'warp_drive'", "vllm_mlx"]),
    ("providers:\n- {name: a, type: llama_cpp}\n- {name: a, type: mlx_lm}",
     ["provider 'a'", "duplicate"]),
    ("providers:\n- {name: a, type: openai_compatible}", ["provider 'a'", "base_url"]),
    ("providers:\n- {name: a, type: llama_cpp, priority: high}",
     ["provider 'a'", "field 'priority'", "'high'"]),
    ("providers:\n- {name: a, type: llama_cpp, base_url: 'ftp://x'}",
     ["provider 'a'", "field 'base_url'", "http"]),
    ("cascade: {timeout_seconds: -1}", ["field 'cascade.timeout_seconds'", "from 0.01 to 86400"]),
    ("providers:\n- {type: llama_cpp}", ["provider '#1'", "field 'name'", "required"]),
    (("providers:\n- {name: a, type: llama_cpp, models: [{name: m, default: true},"
     " {name: n, default: true}]}"), ["provider 'a'", "more than one model"]),
])
def test_bad_configs_give_one_line(text, needles):
    msg = err(text)
    for n in needles:
        assert n in msg, (n, msg)


def test_binary_and_non_utf8_and_huge():
    assert "binary" in err(b"\x00\x01garbage")
    assert "not UTF-8" in err(b"providers: \xff\xfe")
    assert "limit" in err(b"#" * (2 << 20))


def test_unknown_keys_warn_and_priority_collisions_warn():
    cfg = parse("colour: blue\ncascade: {timeout_secs: 3}\nproviders:\n"
                "- {name: a, type: llama_cpp, prioritty: 1}\n- {name: b, type: mlx_lm}")
    w = "\n".join(cfg.warnings)
    assert "unknown key 'colour'" in w and "unknown key 'timeout_secs'" in w
    assert "provider 'a': unknown key 'prioritty'" in w
    assert "'b' field 'priority': 100 is also used by 'a'" in w


def test_url_alias_and_replicas():
    cfg = parse("providers:\n- {name: a, type: vllm_mlx, url: 'http://h:1/v1'}\n"
                "- {name: f, type: vllm_mlx, replicas: ['http://h:1', 'http://h:2']}")
    assert cfg.providers[0].urls == ["http://h:1/v1"]
    assert cfg.providers[1].urls == ["http://h:1", "http://h:2"]


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv("TIMMY_PROVIDERS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("timmy_magic.config.files.user_config_path", lambda: tmp_path / "u.yaml")
    assert find_config() == packaged_default()
    (tmp_path / "u.yaml").write_text("providers: []")
    assert find_config() == tmp_path / "u.yaml"
    (tmp_path / "providers.yaml").write_text("providers: []")
    assert find_config() == tmp_path / "providers.yaml"
    monkeypatch.setenv("TIMMY_PROVIDERS", str(tmp_path / "env.yaml"))
    assert find_config() == tmp_path / "env.yaml"
    assert find_config(tmp_path / "x.yaml") == tmp_path / "x.yaml"
    with pytest.raises(ConfigError, match="env.yaml: file not found"):
        load_config()


def test_api_key_is_masked_in_reprs_and_errors():
    key = "sk-test-SUPERSECRET-1234567890"
    cfg = parse(f"providers:\n- {{name: o, type: openai, api_key: '{key}'}}")
    assert key not in repr(cfg) and key not in str(cfg.providers[0])
    msg = err(f"providers:\n- {{name: o, type: openai, api_key: '{key}', priority: [1]}}")
    assert key not in msg


def test_the_public_surface_stays_what_other_packages_import():
    import timmy_magic.config as config

    assert set(config.__all__) == {
        "CACHE_HELD", "ENV_VAR", "MAX_CONFIG_BYTES", "MAX_CONFIG_NODES", "TRUST_HINT",
        "BreakerConfig", "CacheConfig", "CascadeConfig", "Config", "GateConfig",
        "LaunchConfig", "ModelConfig", "ProviderConfig", "ProviderType", "QuotaConfig",
        "find_config", "found_by_search", "load_config", "packaged_default", "parse_config",
        "trust", "trust_reason", "user_config_path"}
    assert all(hasattr(config, name) for name in config.__all__)


def test_config_validates_types_without_loading_provider_code():
    """The config layer is below providers: parsing (types, cloud, default URLs) must not
    import any provider module."""
    import subprocess
    import sys

    code = ("import sys\nfrom timmy_magic.config import parse_config\n"
            "cfg = parse_config('providers:\\n- {name: o, type: openai}\\n"
            "- {name: l, type: llama_cpp}', env={})\n"
            "assert cfg.provider('o').is_cloud and not cfg.provider('l').is_cloud\n"
            "assert cfg.provider('l').urls == ['http://127.0.0.1:8080']\n"
            "print(sorted(m for m in sys.modules if m.startswith('timmy_magic.providers')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_built_in_type_has_one_adapter_and_registers_like_a_plugin():
    from timmy_magic.config import provider_types
    from timmy_magic.providers import registry

    assert set(registry.ADAPTERS) == {t.name for t in provider_types.BUILT_IN}
    for t in provider_types.BUILT_IN:
        kind = registry.get(t.name)
        assert isinstance(kind, registry.ProviderKind) and provider_types.get(t.name) is kind
        assert (kind.cloud, kind.default_url, kind.needs_key, kind.key_env) == \
            (t.cloud, t.default_url, t.needs_key, t.key_env)
        assert callable(registry.load_factory(t.name))


def test_a_registered_type_is_known_to_config_and_an_unknown_one_lists_it(monkeypatch):
    from timmy_magic.config import provider_types
    from timmy_magic.providers import registry

    monkeypatch.setattr(provider_types, "_TYPES", dict(provider_types._TYPES))
    registry.register(registry.ProviderKind("warp", cloud=True, default_url="https://w.example",
                                            needs_key=False, factory="nowhere:make"))
    cfg = parse("providers:\n- {name: w, type: warp}")
    assert cfg.provider("w").is_cloud and cfg.provider("w").urls == ["https://w.example"]
    assert "known types: " in err("providers:\n- {name: x, type: nope}")
    assert "warp" in err("providers:\n- {name: x, type: nope}")
    with pytest.raises(LookupError, match="no adapter serves provider type 'nope'"):
        registry.load_factory("nope")
