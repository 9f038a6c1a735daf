"""Smoke tests of the real local LLM servers the suite relies on.

They check the wire shapes the package depends on (OpenAI SSE with usage,
Anthropic Messages events, vllm-mlx /v1/status) and that a server can be killed
and restarted on the same port. The MLX servers run a random-weight model, so
only shapes and counts are asserted, never words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fixtures import ServerFactory
from tests.support.servers import (
    SERVER_KINDS,
    BackendMissing,
    ManagedServer,
    ServerError,
    start_llama_server,
    start_vllm_mlx,
)

pytestmark = pytest.mark.integration

SERVER_FIXTURES = {
    "vllm-mlx": "vllm_mlx_server",
    "mlx-lm": "mlx_lm_server",
    "llama-server": "llama_server",
}


def _client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(30.0), trust_env=False)


def _sse(resp: httpx.Response) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE stream; comments (``: heartbeat``) dropped."""
    events: list[tuple[str | None, str]] = []
    event: str | None = None
    data: list[str] = []
    for line in resp.iter_lines():
        if line == "":
            if data:
                events.append((event, "\n".join(data)))
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].lstrip())
    if data:
        events.append((event, "\n".join(data)))
    return events


def _stream_chat(srv: ManagedServer, max_tokens: int = 8) -> list[tuple[str | None, str]]:
    body = {
        "model": srv.model,
        "messages": [{"role": "user", "content": "Say hello to the notebook."}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with _client() as c, c.stream("POST", srv.base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return _sse(r)


def _assert_openai_stream(events: list[tuple[str | None, str]], max_tokens: int) -> None:
    assert events, "empty stream"
    assert events[-1][1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(d) for _, d in events[:-1]]
    assert all(d != "[DONE]" for _, d in events[:-1])
    content = [
        ch["choices"][0]["delta"].get("content")
        for ch in chunks
        if ch.get("choices") and ch["choices"][0].get("delta", {}).get("content")
    ]
    assert len(content) >= 1, chunks
    usages = [ch["usage"] for ch in chunks if ch.get("usage")]
    assert usages, "no usage chunk despite stream_options.include_usage"
    usage = usages[-1]
    assert 1 <= usage["completion_tokens"] <= max_tokens
    assert usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_streamed_chat_completion(kind: str, request: pytest.FixtureRequest) -> None:
    srv: ManagedServer = request.getfixturevalue(SERVER_FIXTURES[kind])
    assert srv.is_running()
    _assert_openai_stream(_stream_chat(srv, max_tokens=8), max_tokens=8)


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_models_endpoint(kind: str, request: pytest.FixtureRequest) -> None:
    srv: ManagedServer = request.getfixturevalue(SERVER_FIXTURES[kind])
    with _client() as c:
        r = c.get(srv.base_url + "/v1/models")
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    assert len(r.json()["data"]) >= 1


def test_llama_server_applies_gemma_template(llama_server: ManagedServer) -> None:
    # Guards the --no-jinja --chat-template gemma pairing: with Jinja on, this
    # llama.cpp would use the string "gemma" itself as the whole prompt.
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    with _client() as c:
        r = c.post(llama_server.base_url + "/apply-template", json={"messages": msgs})
    assert r.status_code == 200
    prompt = r.json()["prompt"]
    assert prompt.startswith("<start_of_turn>user\nWhat is the capital of France?")
    assert prompt.endswith("<start_of_turn>model\n")


def test_vllm_mlx_anthropic_messages_stream(vllm_mlx_server: ManagedServer) -> None:
    body = {
        "model": vllm_mlx_server.model,
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    with (
        _client() as c,
        c.stream("POST", vllm_mlx_server.base_url + "/v1/messages", json=body) as r,
    ):
        assert r.status_code == 200, r.read()
        events = _sse(r)
    names = [e for e, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    for name, data in events:
        assert json.loads(data)["type"] == name
    assert "content_block_start" in names and "content_block_stop" in names
    deltas = [json.loads(d) for e, d in events if e == "content_block_delta"]
    assert deltas and all(d["delta"]["type"] == "text_delta" for d in deltas)
    msg_delta = [json.loads(d) for e, d in events if e == "message_delta"]
    assert msg_delta and 1 <= msg_delta[-1]["usage"]["output_tokens"] <= 8


def test_vllm_mlx_status(vllm_mlx_server: ManagedServer) -> None:
    _stream_chat(vllm_mlx_server, max_tokens=4)
    with _client() as c:
        r = c.get(vllm_mlx_server.base_url + "/v1/status")
    assert r.status_code == 200
    st = r.json()
    for key in ("num_running", "num_waiting", "total_completion_tokens", "generation_tps"):
        assert key in st, st
    assert st["num_running"] == 0
    assert st["total_completion_tokens"] >= 4


def test_vllm_mlx_unknown_model_is_404(vllm_mlx_server: ManagedServer) -> None:
    with _client() as c:
        r = c.post(
            vllm_mlx_server.base_url + "/v1/chat/completions",
            json={"model": "no-such-model", "max_tokens": 2,
                  "messages": [{"role": "user", "content": "hi"}]},
        )  # fmt: skip
    assert r.status_code == 404
    assert "detail" in r.json()


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_kill_then_restart_same_port(kind: str, server_factory: ServerFactory) -> None:
    srv = server_factory(kind)
    port, pid = srv.port, srv.pid
    _assert_openai_stream(_stream_chat(srv, max_tokens=4), max_tokens=4)

    srv.kill()
    assert not srv.is_running()
    with _client() as c, pytest.raises(httpx.ConnectError):
        c.get(srv.base_url + "/health")

    srv.restart()
    assert srv.is_running()
    assert srv.port == port and srv.pid != pid
    _assert_openai_stream(_stream_chat(srv, max_tokens=4), max_tokens=4)

    srv.stop()
    assert not srv.is_running()


def test_missing_model_raises_backend_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendMissing, match="setup_backends.sh"):
        start_vllm_mlx(model_dir=tmp_path / "nothing-here")


def test_failed_start_reports_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    with pytest.raises(ServerError) as exc:
        start_llama_server(gguf=bad, log_dir=tmp_path, ready_timeout=30)
    msg = str(exc.value)
    assert "exited with code" in msg
    assert "last 40 lines of" in msg
