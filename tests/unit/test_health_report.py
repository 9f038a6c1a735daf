"""build_report is pure: provider state and a time in, the badge's state and reason out."""

from timmy_magic.config import parse_config
from timmy_magic.providers.base import Probe
from timmy_magic.routing.breaker import CircuitBreaker
from timmy_magic.routing.endpoints import Endpoint, ProviderState, build_report


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


REFUSED = "cannot connect: All connection attempts failed"


def test_a_local_server_that_never_answered_is_not_running_with_how_to_start_it():
    ls = state("{name: llama-server, type: llama_cpp, base_url: 'http://127.0.0.1:8080'}",
               [Probe("down", error=REFUSED, refused=True)])
    rep = build_report(ls, 0)
    assert rep.state == "not_running" and rep.last_error == REFUSED
    assert rep.hint == ("nothing listening at http://127.0.0.1:8080: start it "
                        "(llama-server -m MODEL.gguf --port 8080) or set enabled: false")
    ol = state("{name: ollama, type: ollama}", [Probe("down", error=REFUSED, refused=True)])
    assert build_report(ol, 0).state == "not_running" and "(ollama serve)" in \
        build_report(ol, 0).hint


def test_down_is_for_a_server_that_answered_and_went_away_or_a_remote_one():
    ls = state("{name: a, type: llama_cpp}", [Probe("down", error=REFUSED, refused=True)])
    ls.endpoints[0].answered = True  # a health check got an answer earlier in the session
    assert build_report(ls, 0).state == "down" and build_report(ls, 0).hint is None
    remote = state("{name: r, type: llama_cpp, base_url: 'http://gpu-box.lan:8080'}",
                   [Probe("down", error=REFUSED, refused=True)])
    assert build_report(remote, 0).state == "down"
    hung = state("{name: h, type: llama_cpp}",  # listening but not answering: an error
                 [Probe("down", error="health check timed out after 2s")])
    assert build_report(hung, 0).state == "down"
    two = "{name: f, type: vllm_mlx, replicas: ['http://127.0.0.1:1', 'http://127.0.0.1:2']}"
    half = state(two, [Probe("down", error=REFUSED, refused=True), None])  # one not checked yet
    assert build_report(half, 0).state == "degraded"
    both = state(two, [Probe("down", error=REFUSED, refused=True), Probe("down", error=REFUSED, refused=True)])
    assert build_report(both, 0).state == "not_running"


def test_connection_refused_is_an_exception_type_not_a_message_prefix():
    """Nobody listening is ``ConnectionRefused`` (a probe and an attempt carry it as a
    flag); a down probe whose message merely reads the same is not "not running"."""
    import httpx

    from timmy_magic.model.errors import ConnectionRefused, ProviderConnectError
    from timmy_magic.providers.base import map_error, probe_error

    err = map_error(httpx.ConnectError("All connection attempts failed"), "x")
    assert isinstance(err, ConnectionRefused) and isinstance(err, ProviderConnectError)
    assert probe_error(httpx.ConnectError("refused"), "x", 1.0).refused
    dropped = map_error(httpx.RemoteProtocolError("peer closed"), "x")
    assert not isinstance(dropped, ConnectionRefused)
    assert not probe_error(httpx.ReadError("reset"), "x", 1.0).refused
    only_text = state("{name: a, type: llama_cpp}", [Probe("down", error=REFUSED)])
    assert build_report(only_text, 0).state != "not_running"
