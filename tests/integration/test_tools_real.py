"""Tools for real: the prompted protocol on llama-server with the real Gemma 3 270M (a
base model with no chat template, asked as a completion). The JSON schema becomes
llama-server's grammar, so every reply is a well-formed call of an offered tool or an
answer: the loop runs end to end. What the model chooses is its own (a base model of
270M parameters): the tests assert the shape and the loop, print what it chose, and
check the choices seen at temperature 0 (the right function, the right arguments, an
answer from its result), which depend on how the prompt puts the tools and results."""

from __future__ import annotations

import json

import pytest

from timmy_magic import Router
from timmy_magic.config import load_config, packaged_default, parse_config

pytestmark = pytest.mark.integration

RAN: list[tuple[str, object]] = []


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    RAN.append(("add", (a, b)))
    return a + b


def capital(country: str) -> str:
    """The capital city of a country."""
    RAN.append(("capital", country))
    return {"France": "Paris", "Italy": "Rome"}.get(country, "unknown")


def shipped_gemma(**extra: object) -> str:
    p = load_config(packaged_default()).provider("local-gemma")
    assert p is not None
    m = p.models[0]
    return json.dumps({"name": m.name, "default": True, "mode": m.mode,
                       "temperature": 0, "stop": list(m.stop), "params": m.params,
                       "max_tokens": 96, "capabilities": ["tools"], **extra})


def make(url: str) -> Router:
    return Router(parse_config(
        "cascade: {health_timeout_seconds: 2, first_token_timeout_seconds: 60,"
        " max_retries_per_provider: 0}\nproviders:\n"
        f"  - {{name: local-gemma, type: llama_cpp, base_url: '{url}', "
        f"models: [{shipped_gemma()}]}}\n", source="real.yaml", env={}))


def test_the_prompted_protocol_runs_the_loop_on_gemma_270m(llama_server):
    RAN.clear()
    with make(llama_server.base_url) as r:
        res = r.complete("What is 2 + 3? Call the add tool.", tools=[add, capital],
                         max_tool_rounds=3)
    print("\ncalls:", [c.line() for c in res.tool_calls], "answer:", repr(res.text),
          "rounds:", res.rounds, "notes:", res.notes)
    assert res.ok, res.error
    # the grammar: every call named an offered tool with arguments its signature takes
    assert res.tool_calls, "the model called no tool"
    assert all(c.name in ("add", "capital") and c.error is None for c in res.tool_calls)
    assert len(RAN) == len(res.tool_calls) == sum(res.rounds >= c.round
                                                  for c in res.tool_calls)
    # it either answered (text) or was stopped at the round limit, said in one note
    assert res.text or (res.rounds == 3 and "stopped after 3 tool rounds" in res.notes[-1])
    # seen at temperature 0: add(a=2, b=3) -> 5, then the answer "5", in one round
    assert (res.tool_calls[0].name, res.tool_calls[0].arguments) == ("add", {"a": 2, "b": 3})
    assert "5" in res.text


def test_a_second_task(llama_server):
    RAN.clear()
    with make(llama_server.base_url) as r:
        res = r.complete("What is the capital of Italy? Use a tool.", tools=[add, capital],
                         max_tool_rounds=2)
    print("\ncalls:", [c.line() for c in res.tool_calls], "answer:", repr(res.text),
          "notes:", res.notes)
    assert res.ok and all(c.error is None for c in res.tool_calls)
    assert res.text or res.rounds == 2
    # seen: capital(country='Italy') -> Rome, then the answer "Rome"
    assert RAN[0] == ("capital", "Italy") and "Rome" in res.text


@pytest.mark.parametrize("type_", ["vllm_mlx", "anthropic"])
def test_a_real_server_takes_the_native_tool_wire(vllm_mlx_server, type_):
    """vllm-mlx (tiny random model: its words are noise) takes the tools and a
    conversation holding a call and its result in both dialects it serves (OpenAI chat
    completions, Anthropic Messages): the request is accepted and answered, which is
    what a real server can show here. (llama-server refuses ``tools`` without
    ``--jinja``, and the base Gemma has no tool template: it uses the prompted protocol.)"""
    from timmy_magic.model.chat import ChatRequest, Message
    from timmy_magic.model.tools import ToolCall
    from timmy_magic.tools import Tool

    key = ", api_key: sk-ant-test-0000000000" if type_ == "anthropic" else ""
    r = Router(parse_config(
        "cascade: {health_timeout_seconds: 2, first_token_timeout_seconds: 60,"
        " max_retries_per_provider: 0}\nproviders:\n"
        f"  - {{name: v, type: {type_}, base_url: '{vllm_mlx_server.base_url}'{key}, "
        f"models: [{{name: {vllm_mlx_server.model}, default: true, "
        "capabilities: [tools]}]}\n", source="real.yaml", env={}))
    call = ToolCall("call_1", "add", '{"a": 2, "b": 3}')
    req = ChatRequest((Message("user", "What is 2 + 3?"),
                       Message("assistant", "", tool_calls=(call,)),
                       Message("tool", "5", tool_call_id="call_1", name="add")),
                      max_tokens=8, tools=(Tool.of(add).spec,))
    with r:
        res = r.complete(req)
    assert res.ok and res.provider == "v", res.error
    assert res.usage.output_tokens and res.usage.output_tokens <= 8
