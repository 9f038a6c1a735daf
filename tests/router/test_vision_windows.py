"""Issue 13, router side, over loopback servers that record each request body: images as
each dialect's parts, providers without vision skipped (or, pinned, a clear error), context
windows discovered by the health check (vLLM's max_model_len, llama-server's /props,
Ollama's /api/show) and requests too big for a window skipped with the reason."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.faultserver import FaultServer
from timmy_magic import Router
from timmy_magic.config import parse_config
from timmy_magic.model.chat import ChatRequest, ImagePart, Message
from timmy_magic.model.errors import NoProviderAvailable, PinnedProviderFailed
from timmy_magic.notebook.display.failures import describe_failure

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
                       "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
IMG = ImagePart.of(PNG, "image/png", 1, 1)
VISION = "models: [{name: eyes, capabilities: [vision]}]"


def router(yaml: str, **cascade: Any) -> Router:
    extra = "".join(f", {k}: {v}" for k, v in cascade.items())
    return Router(parse_config("cascade: {health_timeout_seconds: 1, max_retries_per_provider: 0"
                               f"{extra}}}\nproviders:\n{yaml}", source="t.yaml", env={}))


def image_request(**kw: Any) -> ChatRequest:
    return ChatRequest((Message("system", "be brief"),
                        Message("user", ("What is in the picture?", IMG))), **kw)


def bodies(srv: FaultServer | FakeOllama, suffix: str) -> list[dict[str, Any]]:
    return [r.json for r in srv.requests if r.path.endswith(suffix)]


# ------------------------------------------------------------------ the wire


def test_openai_compatible_gets_image_url_parts() -> None:
    with FaultServer() as fs:
        with router(f"  - {{name: v, type: vllm_mlx, base_url: '{fs.base_url('ok')}', "
                    f"{VISION}}}") as r:
            res = r.complete(image_request(max_tokens=4))
        sent = bodies(fs, "chat/completions")[-1]
    assert res.ok and res.provider == "v"
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in the picture?"},
            {"type": "image_url", "image_url": {"url": IMG.data_url}}]}]
    assert base64.b64decode(sent["messages"][1]["content"][1]["image_url"]["url"]
                            .split(",", 1)[1]) == PNG


def test_anthropic_gets_base64_image_blocks() -> None:
    with FaultServer() as fs:
        yaml = (f"  - {{name: claude, type: anthropic, api_key: sk-ant-test-0000000000,"
                f" base_url: '{fs.base_url('ok', tokens=3)}', {VISION}}}")
        with router(yaml) as r:
            res = r.complete(image_request(max_tokens=3))
        sent = bodies(fs, "/v1/messages")[-1]
    assert res.ok and res.usage.output_tokens == 3
    assert sent["system"] == "be brief"
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": IMG.data}}]}]


def test_ollama_gets_images_on_the_message() -> None:
    with FakeOllama(models=("llava:latest",), tokens=2) as ol:
        yaml = (f"  - {{name: ollama, type: ollama, base_url: '{ol.url}', "
                f"models: [{{name: 'llava:latest', capabilities: [vision]}}]}}")
        with router(yaml) as r:
            res = r.complete(image_request())
        sent = bodies(ol, "/api/chat")[-1]
    assert res.ok and res.provider == "ollama"
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is in the picture?", "images": [IMG.data]}]


# ------------------------------------------------------------------ capability


def test_the_cascade_skips_providers_without_vision_and_says_why() -> None:
    with FaultServer() as fs:
        yaml = (f"  - {{name: text, type: llama_cpp, priority: 1, base_url: "
                f"'{fs.base_url('ok')}', models: [{{name: gemma}}]}}\n"
                f"  - {{name: eyes, type: vllm_mlx, priority: 2, base_url: "
                f"'{fs.base_url('ok')}', {VISION}}}")
        with router(yaml) as r:
            res = r.complete(image_request())
            text_only = r.complete("hello")
        sent = bodies(fs, "chat/completions")
    assert res.provider == "eyes" and text_only.provider == "text"
    assert [str(s) for s in res.trace.skipped] == \
        ["text skipped (no vision: model gemma lacks capabilities: [vision])"]
    assert "text skipped (no vision" in " | ".join(res.trace.lines())
    assert len(sent) == 2 and isinstance(sent[0]["messages"][-1]["content"], list)


def test_pinned_to_a_provider_without_vision_is_one_clear_error() -> None:
    with FaultServer() as fs:
        yaml = (f"  - {{name: text, type: llama_cpp, base_url: '{fs.base_url('ok')}', "
                f"models: [{{name: gemma}}]}}")
        with router(yaml) as r:
            with pytest.raises(PinnedProviderFailed) as info:
                r.complete(image_request(provider="text"))
        assert fs.count(path_suffix="chat/completions") == 0  # nothing was sent
    assert str(info.value) == ("pinned provider 'text' cannot see images: model gemma lacks "
                               "capabilities: [vision]")
    block = describe_failure(info.value, pin_source="option")
    text = block.plain()
    assert "Traceback" not in text and "no vision" in text
    assert "capabilities: [vision]" in " ".join(block.hints)
    assert not any("is running" in h for h in block.hints)


def test_no_provider_with_vision_names_each_reason() -> None:
    with FaultServer() as fs:
        yaml = f"  - {{name: text, type: llama_cpp, base_url: '{fs.base_url('ok')}'}}"
        with router(yaml) as r:
            with pytest.raises(NoProviderAvailable, match=r"text skipped \(no vision"):
                r.complete(image_request())


# ------------------------------------------------------------------ windows


def test_vllm_max_model_len_is_discovered_by_the_health_check() -> None:
    with FaultServer() as fs:
        url = fs.base_url("ok", model="served", max_model_len=4096)
        with router(f"  - {{name: vllm, type: openai_compatible, base_url: '{url}'}}") as r:
            assert r.context_window("vllm") is None  # nothing known before a check
            r.check_health()
            assert r.context_window("vllm") == 4096
            assert r.context_window("vllm", "served") == 4096
            assert r.provider("vllm").windows == {"served": 4096}


def test_vllm_mlx_asks_its_model_list_once() -> None:
    with FaultServer() as fs:
        url = fs.base_url("ok", model="tiny", max_model_len=8192)
        with router(f"  - {{name: vm, type: vllm_mlx, base_url: '{url}'}}") as r:
            r.check_health()
            r.check_health()
            assert r.context_window("vm") == 8192
        assert fs.count(path_suffix="/models") == 1  # the health body has no list: asked once


def test_llama_server_props_n_ctx_is_discovered() -> None:
    with FaultServer() as fs:
        url = fs.base_url("ok", model="gemma", n_ctx=2048)
        with router(f"  - {{name: ls, type: llama_cpp, base_url: '{url}'}}") as r:
            r.check_health()
            assert r.context_window("ls") == 2048
            assert r.context_window("ls", "whatever-alias") == 2048  # one model served
            r.check_health()
        assert fs.count(path_suffix="/props") == 1


def test_providers_yaml_window_wins_over_the_server() -> None:
    with FaultServer() as fs:
        url = fs.base_url("ok", model="gemma", n_ctx=2048)
        yaml = (f"  - {{name: ls, type: llama_cpp, base_url: '{url}', "
                f"models: [{{name: gemma, context_window: 1000}}]}}")
        with router(yaml) as r:
            r.check_health()
            assert r.context_window("ls") == 1000


def test_a_window_that_cannot_be_read_leaves_the_provider_healthy() -> None:
    with FaultServer() as fs:  # /props answers 404 without n_ctx
        with router(f"  - {{name: ls, type: llama_cpp, base_url: '{fs.base_url('ok')}'}}") as r:
            assert r.check_health()["ls"].state == "healthy"
            assert r.context_window("ls") is None


def test_ollama_api_show_context_length_and_num_ctx() -> None:
    with FakeOllama(models=("llama3.2:latest", "qwen2.5:0.5b")) as ol:
        ol.context_lengths["qwen2.5:0.5b"] = 32768
        ol.num_ctx["llama3.2:latest"] = 4096  # the Modelfile's num_ctx is what it runs with
        with router(f"  - {{name: ollama, type: ollama, base_url: '{ol.url}'}}") as r:
            r.check_health()
            assert r.context_window("ollama", "qwen2.5:0.5b") == 32768
            assert r.context_window("ollama", "llama3.2") == 4096  # no tag: :latest
            assert r.context_window("ollama") == 4096  # no model: the smallest
            r.check_health()
        assert ol.count(path_suffix="/api/show") == 2  # once per model


def test_a_request_too_big_for_a_window_is_skipped_with_the_reason() -> None:
    with FaultServer() as fs:
        yaml = (f"  - {{name: small, type: llama_cpp, priority: 1, "
                f"base_url: '{fs.base_url('ok', model='gemma', n_ctx=4000)}'}}\n"
                f"  - {{name: big, type: vllm_mlx, priority: 2, base_url: '{fs.base_url('ok')}',"
                f" models: [{{name: m, context_window: 32768}}]}}")
        with router(yaml) as r:
            r.check_health()
            res = r.complete("x" * 4 * 4100, max_tokens=1024)
            small = r.complete("x" * 4 * 100, max_tokens=1024)
            pinned = r.complete("x" * 4 * 4100, max_tokens=1024, provider="small")
    assert res.provider == "big"
    assert [str(s) for s in res.trace.skipped] == \
        ["small skipped (context window: 5.1k tokens > 4k)"]
    assert small.provider == "small"
    assert pinned.provider == "small"  # pinned: tried (the server has the last word)


def test_what_ollama_says_a_model_can_do_counts_as_declared() -> None:
    """Ollama's /api/show lists each model's capabilities (``tools``, ``vision``): after
    a health check they count as if providers.yaml declared them, per model; before it,
    and for a model that lacks them, the cascade skips with the reason."""
    from timmy_magic.model.tools import ToolSpec

    tools = (ToolSpec("add", "Add two integers.", {"type": "object", "properties": {}}),)
    with FakeOllama(models=("llava:latest", "qwen3:latest"), tokens=2) as ol:
        ol.capabilities = {"llava:latest": ["completion", "vision"],
                           "qwen3:latest": ["completion", "tools", "thinking"]}
        yaml = (f"  - {{name: ollama, type: ollama, base_url: '{ol.url}', "
                f"models: [{{name: llava}}, {{name: qwen3}}]}}")
        with router(yaml) as r:
            before = r.plan(model="qwen3", request=ChatRequest(
                (Message("user", "1+1"),), model="qwen3", tools=tools))
            r.check_health()  # asks /api/show of each model it serves
            assert r.capabilities("ollama", "llava") == frozenset({"vision"})
            assert r.capabilities("ollama", "qwen3") == frozenset({"tools"})
            seen = r.complete(image_request(model="llava"))
            told = r.plan(model="qwen3", request=ChatRequest(
                (Message("user", "1+1"),), model="qwen3", tools=tools))
            blind = r.plan(model="qwen3", request=image_request(model="qwen3"))
    assert before.skipped_for("no_tools") == ["ollama"]
    assert seen.ok and seen.provider == "ollama"
    assert told.order == ("ollama",)
    assert blind.skipped_for("no_vision") == ["ollama"]
