"""build_report is pure: provider state and a time in, the badge's state and reason out."""

from timmy_magic.breaker import CircuitBreaker
from timmy_magic.config import parse_config
from timmy_magic.health import Endpoint, ProviderState, build_report
from timmy_magic.providers.base import Probe


def state(yaml: str, probes: list[Probe | None]) -> ProviderState:
    cfg = parse_config(f"providers:\n  - {yaml}", source="t.yaml", env={}).providers[0]
    eps = [Endpoint(u, CircuitBreaker(failure_threshold=1, recovery_timeout=10), probe=p)
           for u, p in zip(cfg.urls, probes)]
    return ProviderState(cfg, eps)


def test_configuration_states_come_first():
    off = state("{name: a, type: llama_cpp, enabled: false}", [Probe("healthy")])
    assert build_report(off, 0).state == "disabled"
    nokey = state("{name: o, type: openai, api_key: '${OPENAI_API_KEY}'}", [None])
    rep = build_report(nokey, 0)
    assert rep.state == "not_configured" and rep.hint == "set OPENAI_API_KEY (api_key)"
    bad = state("{name: a, type: llama_cpp}", [Probe("healthy")])
    bad.misconfigured = "HTTP 401: bad key"
    assert (build_report(bad, 0).state, build_report(bad, 0).last_error) == \
        ("misconfigured", "HTTP 401: bad key")


def test_probes_and_circuits():
    two = "{name: f, type: vllm_mlx, replicas: ['http://a:1', 'http://b:1']}"
    assert build_report(state(two, [None, None]), 0).state == "unknown"
    assert build_report(state(two, [Probe("healthy"), Probe("healthy")]), 0).state == "healthy"
    mixed = build_report(state(two, [Probe("healthy"), Probe("down", error="refused")]), 0)
    assert mixed.state == "degraded" and mixed.last_error == "refused"
    assert build_report(state(two, [Probe("down"), Probe("down")]), 0).state == "down"
    st = state(two, [Probe("healthy"), Probe("healthy")])
    for ep in st.endpoints:
        ep.breaker.record_failure(5)
    assert build_report(st, 6).state == "circuit_open"
    assert build_report(st, 6).circuit == "open" and build_report(st, 15).circuit == "half_open"
