"""Self-tests of the fault-injecting fake servers in tests/support.

Every network call carries a short timeout, so a broken fake fails fast
instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.faultserver import SCENARIOS, Blackhole, FaultServer, closed_port

FAST = httpx.Timeout(5.0, read=2.0)
SHORT_READ = httpx.Timeout(5.0, read=0.3)
CHAT = "/v1/chat/completions"


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fault-model",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
        **extra,
    }


def data_lines(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
def _server() -> Iterator[FaultServer]:
    with FaultServer(cap=10.0) as srv:
        yield srv


@pytest.fixture
def server(_server: FaultServer) -> Iterator[FaultServer]:
    _server.reset()
    yield _server
    assert _server.errors == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=FAST) as c:
        yield c


# ------------------------------------------------------------------- ok


def test_ok_stream_sse_with_usage_and_done(server: FaultServer, client: httpx.Client) -> None:
    url = server.base_url("ok", tokens=3) + CHAT
    r = client.post(url, json=chat(True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = data_lines(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "tok0 tok1 tok2 "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_ok_json_and_text_and_extra_v1(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(
        server.base_url("ok", text="Hello, big world") + "/v1/v1/chat/completions", json=chat()
    )
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello, big world"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_ok_parses_with_openai_sdk(server: FaultServer) -> None:
    openai = pytest.importorskip("openai")

    async def run() -> tuple[str, Any, str]:
        client = openai.AsyncOpenAI(
            base_url=server.base_url("ok", tokens=4) + "/v1",
            api_key="x",
            max_retries=0,
            timeout=5.0,
        )
        async with client:
            stream = await client.chat.completions.create(
                model="fault-model",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, usage = [], None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                usage = chunk.usage or usage
            full = await client.chat.completions.create(model="fault-model", messages=[])
            return "".join(parts), usage, full.choices[0].message.content or ""

    streamed, usage, full = asyncio.run(run())
    assert streamed == full == "tok0 tok1 tok2 tok3 "
    assert usage is not None and usage.completion_tokens == 4


# --------------------------------------------------------------- errors


@pytest.mark.parametrize("code", [400, 401, 403, 404, 408, 429, 500, 502, 503, 504])
def test_status_codes(server: FaultServer, client: httpx.Client, code: int) -> None:
    r = client.post(server.base_url("status", code=code, retry_after=7) + CHAT, json=chat(True))
    assert r.status_code == code
    assert r.headers["retry-after"] == "7"
    assert "message" in r.json()["error"]


def test_status_raw_body_and_sdk_error(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(
        server.base_url("status", code=500, body='{"detail":"x,y"}') + CHAT, json=chat()
    )
    assert r.json() == {"detail": "x,y"}
    openai = pytest.importorskip("openai")
    url = server.base_url("status", code=429) + "/v1"
    with (
        openai.OpenAI(base_url=url, api_key="x", max_retries=0) as sdk,
        pytest.raises(openai.RateLimitError),
    ):
        sdk.chat.completions.create(model="m", messages=[])


def test_flaky_fails_n_times_then_recovers(server: FaultServer, client: httpx.Client) -> None:
    url = server.base_url("flaky", fail=2, code=503, retry_after=1) + CHAT
    codes = [client.post(url, json=chat()).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    other = server.base_url("flaky", fail=1, code=502) + CHAT  # separate counter per params
    assert client.post(other, json=chat()).status_code == 502
    server.reset()
    assert client.post(url, json=chat()).status_code == 503


# ------------------------------------------------------- hangs and drops


def test_hang_headers_read_timeout(server: FaultServer) -> None:
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url("hang_headers") + CHAT, json=chat(True), timeout=SHORT_READ)
    assert time.monotonic() - t0 < 1.5
    assert server.count("hang_headers") == 1
    assert server.requests[0].json["stream"] is True  # the request was read


def test_delay_headers(server: FaultServer, client: httpx.Client) -> None:
    url = server.base_url("ok", delay_headers=0.5) + CHAT
    with pytest.raises(httpx.ReadTimeout):
        client.post(url, json=chat(), timeout=httpx.Timeout(5.0, read=0.1))
    t0 = time.monotonic()
    assert (
        client.post(server.base_url("ok", delay_headers=0.2) + CHAT, json=chat()).status_code == 200
    )
    assert time.monotonic() - t0 >= 0.2


def test_hang_mid_stream(server: FaultServer) -> None:
    got: list[str] = []
    url = server.base_url("hang_mid_stream", tokens=2) + CHAT
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("POST", url, json=chat(True), timeout=SHORT_READ) as r,
    ):
        assert r.status_code == 200
        got.extend(r.iter_lines())
    assert len(data_lines("\n".join(got))) == 3  # role chunk + 2 tokens


def test_hang_mid_body_non_stream(server: FaultServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url("hang_mid_stream") + CHAT, json=chat(), timeout=SHORT_READ)


@pytest.mark.parametrize("rst", [0, 1])
def test_drop_mid_stream(server: FaultServer, rst: int) -> None:
    got: list[str] = []
    url = server.base_url("drop_mid_stream", tokens=3, rst=rst) + CHAT
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        httpx.stream("POST", url, json=chat(True), timeout=FAST) as r,
    ):
        got.extend(r.iter_lines())
    if not rst:
        assert "[DONE]" not in got and len(data_lines("\n".join(got))) == 4


def test_drop_mid_body_non_stream(server: FaultServer, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(server.base_url("drop_mid_stream") + CHAT, json=chat())


# ------------------------------------------------------ malformed bodies


def test_malformed_json(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(server.base_url("malformed_json") + CHAT, json=chat())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    r = client.post(server.base_url("malformed_json") + CHAT, json=chat(True))
    assert data_lines(r.text) == ["{not json", "[DONE]"]


def test_malformed_sse(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(server.base_url("malformed_sse") + CHAT, json=chat(True))
    assert "this line has no data prefix" in r.text
    bad = [d for d in data_lines(r.text) if d != "[DONE]" and not d.startswith('{"id"')]
    assert bad and all(_not_json(d) for d in bad)
    assert data_lines(r.text)[-1] == "[DONE]"


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def test_no_done_clean_close(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(server.base_url("no_done", tokens=2) + CHAT, json=chat(True))
    data = data_lines(r.text)
    assert "[DONE]" not in data
    assert json.loads(data[-1])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("mode", "expected"), [("done", ["[DONE]"]), ("close", [])])
def test_empty_stream(
    server: FaultServer, client: httpx.Client, mode: str, expected: list[str]
) -> None:
    r = client.post(server.base_url("empty_stream", mode=mode) + CHAT, json=chat(True))
    assert r.status_code == 200 and data_lines(r.text) == expected
    assert client.post(server.base_url("empty_stream") + CHAT, json=chat()).content == b""


def test_huge_chunk(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(server.base_url("huge_chunk") + CHAT, json=chat(True))
    deltas = [json.loads(d) for d in data_lines(r.text)[:-1]]
    assert (
        max(len(c["choices"][0]["delta"].get("content", "")) for c in deltas if c["choices"])
        == 1 << 20
    )


def test_drip_survives_idle_timeout(server: FaultServer) -> None:
    stamps: list[float] = []
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        server.base_url("drip", interval=0.15, tokens=3) + CHAT,
        json=chat(True),
        timeout=SHORT_READ,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "tok" in line:
                stamps.append(time.monotonic())
    # 3 x 0.15 s of drip, each gap under the 0.3 s read timeout
    assert len(stamps) == 3 and stamps[-1] - t0 >= 0.4


def test_wrong_content_type(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(server.base_url("wrong_content_type") + CHAT, json=chat(True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


def test_redirect(server: FaultServer, client: httpx.Client) -> None:
    url = server.base_url("redirect", to="status", code=502) + CHAT
    r = client.post(url, json=chat())
    assert r.status_code == 307
    assert r.headers["location"] == server.base_url("status", code=502) + CHAT
    assert client.post(url, json=chat(), follow_redirects=True).status_code == 502
    r = client.post(server.base_url("redirect", redirect_code=302) + CHAT, json=chat())
    assert r.status_code == 302 and "/s/ok/" in r.headers["location"]


# ------------------------------------------------- health, models, misc


def test_health_and_models(server: FaultServer, client: httpx.Client) -> None:
    assert client.get(server.base_url("hang_headers") + "/health").json() == {
        "status": "healthy",
        "model_loaded": True,
        "model_name": "fault-model",
    }
    models = client.get(server.base_url("ok") + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fault-model"
    assert client.get(server.base_url("health_status", health=503) + "/health").status_code == 503
    assert client.get(server.base_url("ok", loaded=0) + "/health").json()["model_loaded"] is False
    with pytest.raises(httpx.ReadTimeout):
        client.get(server.base_url("ok", health="hang") + "/health", timeout=SHORT_READ)


def test_unknown_scenario_and_route(server: FaultServer, client: httpx.Client) -> None:
    with pytest.raises(ValueError):
        server.base_url("nope")
    assert client.post(f"{server.url}/s/nope/_{CHAT}", json=chat()).status_code == 404
    assert client.get(server.base_url("ok") + "/v1/other").status_code == 404
    assert set(SCENARIOS) >= {"ok", "status", "flaky", "hang_headers", "redirect", "drip"}


def test_recording(server: FaultServer, client: httpx.Client) -> None:
    client.post(server.base_url("ok", tokens=1) + CHAT, json=chat(), headers={"X-Probe": "1"})
    client.get(server.base_url("ok") + "/health")
    client.post(server.base_url("status", code=500) + CHAT, json=chat())
    rec = server.requests[0]
    assert (rec.method, rec.scenario, rec.params) == ("POST", "ok", {"tokens": "1"})
    assert rec.headers["x-probe"] == "1" and rec.json["model"] == "fault-model"
    assert rec.time <= time.monotonic()
    assert server.count() == 3 and server.count("ok") == 2
    assert server.count(path_suffix=CHAT) == 2 and server.count("ok", "/health") == 1
    server.reset()
    assert server.count() == 0


def test_open_connections_tracks_client_close() -> None:
    with FaultServer() as server:  # own server: no connections left over by other tests
        with httpx.Client(timeout=FAST) as c:
            c.get(server.base_url("ok") + "/health")
            c.get(server.base_url("ok") + "/health")
            assert wait_until(lambda: server.open_connections == 1)  # keep-alive reuse
        assert wait_until(lambda: server.open_connections == 0)
        with pytest.raises(httpx.ReadTimeout):  # a client giving up on a hang closes its socket
            httpx.post(server.base_url("hang_headers") + CHAT, json=chat(), timeout=SHORT_READ)
        assert wait_until(lambda: server.open_connections == 0)


# ------------------------------------------------------------ anthropic


def test_anthropic_stream_events(server: FaultServer, client: httpx.Client) -> None:
    r = client.post(
        server.base_url("ok", tokens=2) + "/v1/messages", json=chat(True, max_tokens=10)
    )
    events = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(d) for d in data_lines(r.text)]
    assert [p["type"] for p in payloads] == events
    assert payloads[-2]["usage"]["output_tokens"] == 2
    body = client.post(server.base_url("ok", tokens=2) + "/v1/messages", json=chat()).json()
    assert body["type"] == "message" and body["content"][0]["text"] == "tok0 tok1 "
    err = client.post(server.base_url("status", code=429) + "/v1/messages", json=chat())
    assert err.status_code == 429 and err.json()["error"]["type"] == "rate_limit_error"


def test_anthropic_sdk_parses(server: FaultServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    url = server.base_url("ok", tokens=3)
    with (
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=5.0) as sdk,
        sdk.messages.stream(
            model="fault-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 " and final.usage.output_tokens == 3


# ------------------------------------------------------ stop and helpers


def _hang_in_thread(fn: Any) -> threading.Thread:
    def run() -> None:
        try:
            fn()
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stop_is_prompt_with_hung_connections() -> None:
    srv = FaultServer().start()
    slow = httpx.Timeout(20.0)
    threads = [
        _hang_in_thread(
            lambda: httpx.post(srv.base_url("hang_headers") + CHAT, json=chat(), timeout=slow)
        ),
        _hang_in_thread(
            lambda: httpx.post(
                srv.base_url("hang_mid_stream") + CHAT, json=chat(True), timeout=slow
            )
        ),
        _hang_in_thread(
            lambda: httpx.get(srv.base_url("ok", health="hang") + "/health", timeout=slow)
        ),
    ]
    assert wait_until(lambda: srv.count() == 3 and srv.open_connections == 3)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0
    for thread in threads:
        thread.join(timeout=2.0)
        assert not thread.is_alive()  # clients saw the connection die
    assert srv.open_connections == 0
    srv.stop()  # idempotent


def test_closed_port_refuses() -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{closed_port()}/health", timeout=FAST)


def test_blackhole() -> None:
    with Blackhole() as hole:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(hole.url + CHAT, json=chat(), timeout=SHORT_READ)
        assert hole.accepted == 1
        thread = _hang_in_thread(lambda: httpx.get(hole.url, timeout=20.0))
        assert wait_until(lambda: hole.open_connections >= 1)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0
    thread.join(timeout=2.0)
    assert not thread.is_alive()


# ------------------------------------------------------------ fake ollama


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.2:latest", "qwen2.5:0.5b"], tokens=3) as srv:
        yield srv
        assert srv.errors == []


def test_ollama_listing_endpoints(ollama: FakeOllama, client: httpx.Client) -> None:
    assert client.get(ollama.url + "/").text == "Ollama is running"
    assert client.head(ollama.url + "/").status_code == 200
    assert "version" in client.get(ollama.url + "/api/version").json()
    tags = client.get(ollama.url + "/api/tags").json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(tags[0])
    assert tags[0]["details"]["format"] == "gguf"
    ps = client.get(ollama.url + "/api/ps").json()["models"]
    assert {"expires_at", "size_vram"} <= set(ps[0])


def test_ollama_chat_stream_ndjson(ollama: FakeOllama, client: httpx.Client) -> None:
    r = client.post(
        ollama.url + "/api/chat",
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "why is the sky blue"}],
        },
    )
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert "".join(line["message"]["content"] for line in lines) == "tok0 tok1 tok2 "
    final = lines[-1]
    assert (
        final["done_reason"] == "stop"
        and final["eval_count"] == 3
        and final["prompt_eval_count"] == 5
    )
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["created_at"].endswith("Z")


def test_ollama_chat_non_stream_and_errors(ollama: FakeOllama, client: httpx.Client) -> None:
    url = ollama.url + "/api/chat"
    msg = [{"role": "user", "content": "hi"}]
    body = client.post(url, json={"model": "qwen2.5:0.5b", "messages": msg, "stream": False}).json()
    assert body["done"] is True and body["message"] == {
        "role": "assistant",
        "content": "tok0 tok1 tok2 ",
    }
    r = client.post(url, json={"model": "x", "messages": msg})
    assert r.status_code == 404 and r.json() == {
        "error": 'model "x" not found, try pulling it first'
    }
    ollama.fail_next(503)
    assert client.post(url, json={"model": "llama3.2", "messages": msg}).status_code == 503
    assert client.post(url, json={"model": "llama3.2", "messages": msg}).status_code == 200
    ollama.hang_next()
    with pytest.raises(httpx.ReadTimeout):
        client.post(url, json={"model": "llama3.2", "messages": msg}, timeout=SHORT_READ)
    assert ollama.count(path_suffix="/api/chat") == 5
    assert ollama.requests[0].json["stream"] is False
    ollama.reset()
    assert ollama.count() == 0


def test_ollama_token_delay_and_prompt_stop(ollama: FakeOllama) -> None:
    ollama.token_delay = 0.1
    t0 = time.monotonic()
    with httpx.stream(
        "POST",
        ollama.url + "/api/chat",
        timeout=SHORT_READ,
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        assert len(list(r.iter_lines())) == 4
    assert time.monotonic() - t0 >= 0.3
    ollama.hang_next()
    thread = _hang_in_thread(lambda: httpx.post(ollama.url + "/api/chat", json={}, timeout=20.0))
    assert wait_until(lambda: ollama.count() == 2)
    t0 = time.monotonic()
    ollama.stop()
    assert time.monotonic() - t0 < 1.0
    thread.join(timeout=2.0)
    assert not thread.is_alive()
