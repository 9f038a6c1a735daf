"""Adapters that have no real server here: Ollama (a faithful fake of its documented API)
and the Anthropic Messages API over the fault server (the real one is vllm-mlx's
/v1/messages, in tests/integration). Also the URL rules of the OpenAI-compatible types."""

from __future__ import annotations

import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.faultserver import FaultServer
from timmy_magic import Router
from timmy_magic.config import parse_config
from timmy_magic.model.errors import NoProviderAvailable
from timmy_magic.providers.openai_compat import client_base, health_url


def router(yaml: str) -> Router:
    return Router(parse_config("cascade: {health_timeout_seconds: 1, max_retries_per_provider: 0}"
                               f"\nproviders:\n{yaml}", source="t.yaml", env={}))


@pytest.mark.parametrize("type_,url,client,health", [
    ("vllm_mlx", "http://h:8000", "http://h:8000/v1", "http://h:8000/health"),
    ("vllm_mlx", "http://h:8000/v1", "http://h:8000/v1", "http://h:8000/health"),
    ("vllm_mlx", "http://h:8000/v1/", "http://h:8000/v1", "http://h:8000/health"),
    ("mlx_lm", "http://h:8080", "http://h:8080/v1", "http://h:8080/health"),
    ("llama_cpp", "http://h:8080/v1", "http://h:8080/v1", "http://h:8080/health"),
    ("openai_compatible", "http://h:1234", "http://h:1234/v1", "http://h:1234/v1/models"),
    ("openai_compatible", "http://h/proxy", "http://h/proxy", "http://h/proxy/models"),
    ("openai", "https://api.openai.com/v1", "https://api.openai.com/v1",
     "https://api.openai.com/v1/models"),
])
def test_url_rules(type_, url, client, health):
    assert client_base(type_, url) == client
    assert health_url(type_, url) == health


def test_ollama_native_stream_health_and_server_timings():
    with FakeOllama(models=("llama3.2:latest", "qwen2.5:0.5b"), tokens=7) as ol:
        with router(f"  - {{name: ollama, type: ollama, base_url: '{ol.url}'}}") as r:
            rep = r.check_health()["ollama"]
            assert rep.state == "healthy"
            assert rep.models == ("llama3.2:latest", "qwen2.5:0.5b")
            assert "loaded_models" in rep.detail
            res = r.complete("hi", max_tokens=7, temperature=0.1)
        body = [q.json for q in ol.requests if q.path.endswith("/api/chat")][-1]
    assert res.ok and res.provider == "ollama" and res.model == "llama3.2:latest"
    assert res.usage.output_tokens == 7 and not res.usage.estimated
    assert body["options"] == {"num_predict": 7, "temperature": 0.1} and body["stream"] is True


def test_ollama_unknown_model_is_a_clear_404_without_retry():
    with FakeOllama() as ol:
        with router(f"  - {{name: ollama, type: ollama, base_url: '{ol.url}'}}") as r:
            with pytest.raises(NoProviderAvailable, match='HTTP 404: model "nope" not found'):
                r.complete("hi", model="nope")
            assert ol.count(path_suffix="/api/chat") == 1


def test_ollama_failure_fails_over():
    with FakeOllama() as ol, FaultServer() as fs:
        ol.fail_next(500, error="boom")
        yaml = (f"  - {{name: ollama, type: ollama, priority: 1, base_url: '{ol.url}'}}\n"
                f"  - {{name: b, type: vllm_mlx, priority: 2, base_url: '{fs.base_url('ok')}'}}")
        with router(yaml) as r:
            res = r.complete("hi")
    assert res.provider == "b" and "HTTP 500: boom" in res.trace.attempts[0].error


def test_anthropic_messages_stream_over_the_wire():
    with FaultServer() as fs:
        yaml = (f"  - {{name: claude, type: anthropic, api_key: sk-ant-test-0000000000,"
                f" base_url: '{fs.base_url('ok', tokens=4)}',"
                f" models: [{{name: claude-test, default: true}}]}}")
        with router(yaml) as r:
            res = r.complete("hello", system="be brief", max_tokens=4)
        sent = [q for q in fs.requests if q.path.endswith("/v1/messages")][-1]
    assert res.ok and res.usage.output_tokens == 4 and res.text.count("tok") == 4
    assert sent.json["system"] == "be brief" and sent.json["max_tokens"] == 4
    assert sent.json["messages"] == [{"role": "user", "content": "hello"}]
    assert sent.headers["x-api-key"] == "sk-ant-test-0000000000"


def test_anthropic_error_status_maps_like_the_others():
    with FaultServer() as fs:
        yaml = (f"  - {{name: claude, type: anthropic, api_key: k-000000000000,"
                f" base_url: '{fs.base_url('status', code=529)}', models: [{{name: m}}]}}")
        with router(yaml) as r:
            with pytest.raises(NoProviderAvailable, match="HTTP 529"):
                r.complete("x")
