"""The router against real local LLM servers started by the fixtures: vllm-mlx and
mlx_lm.server (tiny random model: assert on shapes, not words), llama-server (Gemma 3 270M:
real text), the anthropic adapter against vllm-mlx's /v1/messages, and kill/restart."""

from __future__ import annotations

import time

import pytest

from tests.support.faultserver import closed_port
from timmy_magic import ChatRequest, Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Delta, Done
from timmy_magic.model.errors import PinnedProviderFailed

pytestmark = pytest.mark.integration


def make(providers: str, cascade: str = "") -> Router:
    return Router(parse_config(
        "cascade: {health_timeout_seconds: 2, first_token_timeout_seconds: 30,"
        f" max_retries_per_provider: 0{cascade}}}\nproviders:\n{providers}",
        source="real.yaml", env={}))


def test_vllm_mlx_health_url_rules_and_stream(vllm_mlx_server):
    # base URL given WITH /v1: health must strip it, the client must not double it
    url = vllm_mlx_server.base_url + "/v1"
    with make(f"  - {{name: vllm-mlx, type: vllm_mlx, base_url: '{url}'}}") as r:
        rep = r.check_health()["vllm-mlx"]
        assert rep.state == "healthy" and rep.detail["model_loaded"] is True
        assert rep.models == (rep.detail["model_name"],)
        assert not rep.is_cloud
        events = list(r.stream("Hello", max_tokens=12))
    res = events[-1].result
    assert isinstance(events[-1], Done) and res.ok and res.provider == "vllm-mlx"
    assert res.model == rep.detail["model_name"]
    assert sum(isinstance(e, Delta) for e in events) >= 1
    assert 1 <= res.usage.output_tokens <= 12 and not res.usage.estimated
    assert res.timings.ttft_s > 0 and res.timings.output_tokens_per_s


def test_vllm_mlx_is_never_cloud_gated(vllm_mlx_server):
    providers = (f"  - {{name: vllm-mlx, type: vllm_mlx, base_url: "
                 f"'{vllm_mlx_server.base_url}'}}\n")
    with make(providers) as r:
        r.set_local_only(True)
        assert r.complete("hi", max_tokens=4).provider == "vllm-mlx"


def test_mlx_lm_stream(mlx_lm_server):
    with make(f"  - {{name: mlx-lm, type: mlx_lm, base_url: '{mlx_lm_server.base_url}'}}") as r:
        assert r.check_health()["mlx-lm"].state == "healthy"
        res = r.complete("Hello", max_tokens=8)
    assert res.ok and res.provider == "mlx-lm" and 1 <= res.usage.output_tokens <= 8


def test_llama_server_real_text(llama_server):
    with make(f"  - {{name: llama, type: llama_cpp, base_url: '{llama_server.base_url}'}}") as r:
        assert r.check_health()["llama"].state == "healthy"
        res = r.complete("The capital of France is", max_tokens=16, temperature=0)
    assert res.ok and res.provider == "llama" and res.text.strip()
    assert "<|im_end|>" not in res.text  # the gemma chat template is in use
    assert res.usage.output_tokens and not res.usage.estimated


def test_anthropic_adapter_against_vllm_mlx_messages(vllm_mlx_server):
    providers = (f"  - {{name: claude-local, type: anthropic, cloud: false, api_key: unused-key-0000,"
                 f" base_url: '{vllm_mlx_server.base_url}'}}\n")
    with make(providers) as r:
        rep = r.check_health()["claude-local"]
        assert rep.state == "healthy" and rep.models
        res = r.complete(ChatRequest.of("Hi", system="Be brief.", max_tokens=8))
    assert res.ok and res.model and 1 <= res.usage.output_tokens <= 8
    # vllm-mlx streams input_tokens: 0; we report "unknown", never a false zero
    assert res.usage.input_tokens != 0


def test_cascade_fails_over_from_dead_local_to_real_server(vllm_mlx_server):
    providers = (f"  - {{name: dead, type: llama_cpp, priority: 1,"
                 f" base_url: 'http://127.0.0.1:{closed_port()}'}}\n"
                 f"  - {{name: vllm-mlx, type: vllm_mlx, priority: 2,"
                 f" base_url: '{vllm_mlx_server.base_url}'}}\n")
    with make(providers) as r:
        res = r.complete("Hello", max_tokens=4)
    assert res.provider == "vllm-mlx"
    assert [a.provider for a in res.trace.attempts] == ["dead", "vllm-mlx"]
    assert "cannot connect" in res.trace.attempts[0].error


def test_sigkill_before_and_during_stream_then_recovery(server_factory):
    """Kill a real backend: before the first token the cascade fails over; during a stream
    the partial text is kept with an error; after restart the half-open probe closes the
    circuit again."""
    victim = server_factory.vllm_mlx()
    backup = server_factory.mlx_lm()
    providers = (f"  - {{name: victim, type: vllm_mlx, priority: 1, base_url: '{victim.base_url}'}}\n"
                 f"  - {{name: backup, type: mlx_lm, priority: 2, base_url: '{backup.base_url}'}}\n")
    breaker = (", idle_timeout_seconds: 5, circuit_breaker: {failure_threshold: 1,"
               " recovery_timeout: 1}")
    with make(providers, breaker) as r:
        assert r.complete("warm", max_tokens=2).provider == "victim"
        # during a stream: partial text kept, failure counted against the victim
        events = r.stream("Tell me a long story", max_tokens=400)
        got = []
        for ev in events:
            if isinstance(ev, Delta):
                got.append(ev.text)
                if len(got) == 3:
                    victim.kill()
            elif isinstance(ev, Done):
                broken = ev.result
        assert broken.provider == "victim" and broken.error and len(got) >= 3
        assert broken.text == "".join(got)
        assert r.health()["victim"].circuit == "open"
        # before the first token (server gone): failover to the backup
        res = r.complete("hi", max_tokens=2)
        assert res.provider == "backup"
        assert [s.reason for s in res.trace.skipped if s.provider == "victim"] == ["circuit_open"]
        with pytest.raises(PinnedProviderFailed):
            r.complete(ChatRequest.of("hi", provider="victim", max_tokens=2))
        # it comes back: after recovery_timeout a half-open probe goes through and closes it
        victim.restart()
        time.sleep(1.1)
        assert r.health()["victim"].circuit == "half_open"
        res = r.complete("hi again", max_tokens=2)
        assert res.provider == "victim" and r.health()["victim"].circuit == "closed"
        assert r.check_health()["victim"].state == "healthy"
