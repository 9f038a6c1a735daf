"""Completion mode (issue 15) against real servers: llama-server with the real Gemma 3 270M
(a base model: asked as a plain completion it answers well, asked as chat it does not),
and vllm-mlx and mlx_lm.server with the tiny random model (``/v1/completions`` mechanics:
streamed text, usage, events, footer; its words are noise)."""

from __future__ import annotations

import json

import pytest

from timmy_magic import ChatRequest, Router
from timmy_magic.config import load_config, packaged_default, parse_config
from timmy_magic.model.chat import Delta, Done, Message, Trying

pytestmark = pytest.mark.integration


def shipped_gemma() -> str:
    """The shipped local-gemma's model entry (mode, temperature, stop, params, max_tokens),
    as YAML flow (JSON), so these tests ask exactly as the embedded default does."""
    p = load_config(packaged_default()).provider("local-gemma")
    assert p is not None
    m = p.models[0]
    return json.dumps({"name": m.name, "default": True, "mode": m.mode,
                       "temperature": m.temperature, "stop": list(m.stop),
                       "params": m.params, "max_tokens": m.max_tokens})


def make(providers: str) -> Router:
    return Router(parse_config(
        "cascade: {health_timeout_seconds: 2, first_token_timeout_seconds: 60,"
        " max_retries_per_provider: 0}\nproviders:\n" + providers,
        source="real.yaml", env={}))


def test_gemma_as_a_plain_completion_answers_well(llama_server):
    with make(f"  - {{name: local-gemma, type: llama_cpp, base_url: "
              f"'{llama_server.base_url}', models: [{shipped_gemma()}]}}\n"
              f"  - {{name: as-chat, type: llama_cpp, base_url: '{llama_server.base_url}',"
              f" priority: 200, models: [{{name: gemma-3-270m}}]}}\n") as r:
        events = list(r.stream("The three primary colors are", provider="local-gemma"))
        done = events[-1]
        assert isinstance(events[0], Trying) and isinstance(done, Done)
        res = done.result
        assert res.ok and res.provider == "local-gemma" and res.model == "gemma-3-270m"
        # seen: " red, blue and yellow." (chat with the gemma template: "蓝,黄,绿 ...")
        words = res.text.lower()
        assert all(c in words for c in ("red", "blue", "yellow")), res.text
        assert "".join(e.text for e in events if isinstance(e, Delta)) == res.text
        assert "\n\n" not in res.text and len(res.text) < 200  # the stop held
        assert res.usage.output_tokens and not res.usage.estimated
        assert res.usage.input_tokens and res.timings.ttft_s
        assert res.footer().startswith("local-gemma · gemma-3-270m · TTFT ")
        # seen: " a text file that contains data and code. It's used to store, read, ..."
        nb = r.complete("A Jupyter notebook is", provider="local-gemma")
        assert nb.ok and ("file" in nb.text or "code" in nb.text), nb.text
        # the same server asked through chat: the base model has no template to follow
        chat = r.complete("The three primary colors are", provider="as-chat",
                          temperature=0, max_tokens=24)
        assert chat.ok and chat.text != res.text


def test_gemma_whole_body_and_transcript(llama_server):
    with make(f"  - {{name: local-gemma, type: llama_cpp, base_url: "
              f"'{llama_server.base_url}', models: [{shipped_gemma()}]}}\n") as r:
        # seen: " Paris, 10th largest city in Europe." ("The capital of France is" gets
        # " the capital of the country. ...": a base model continues, it does not answer)
        q = "Q: What is the capital of France?\nA:"
        streamed = r.complete(q, provider="local-gemma")
        whole = r.complete(q, provider="local-gemma", stream=False)
        assert whole.ok and whole.text == streamed.text and "Paris" in whole.text
        assert whole.usage.output_tokens and not whole.usage.estimated
        req = ChatRequest((Message("system", "A short story."),
                           Message("user", "My name is Ada. I like"),
                           Message("assistant", " to read books."),
                           Message("user", "Ada likes")), provider="local-gemma")
        res = r.complete(req)
        assert res.ok and res.text.strip() and "User:" not in res.text


@pytest.mark.parametrize("kind", ["vllm_mlx", "mlx_lm"])
def test_mlx_servers_serve_completion_mode(kind, request):
    srv = request.getfixturevalue("vllm_mlx_server" if kind == "vllm_mlx" else "mlx_lm_server")
    name = srv.model if kind == "vllm_mlx" else "default_model"
    with make(f"  - {{name: p, type: {kind}, base_url: '{srv.base_url}', models: "
              f"[{{name: {name}, mode: completion, temperature: 0, stop: ['zzzz']}}]}}\n") as r:
        events = list(r.stream("Hello there", max_tokens=8))
        res = events[-1].result
        assert res.ok and res.provider == "p" and res.model == name
        assert sum(isinstance(e, Delta) for e in events) >= 1
        assert "".join(e.text for e in events if isinstance(e, Delta)) == res.text
        # both send usage in the last chunk of a completion stream
        assert 1 <= res.usage.output_tokens <= 8 and not res.usage.estimated
        # a tiny model may answer in one burst, which gives no rate (attempt.py): no
        # figure then, never a made-up one
        tps = res.timings.output_tokens_per_s
        assert (tps is None or tps > 0) and f"p · {name} · TTFT" in res.footer()
        whole = r.complete("Hello there", max_tokens=8, stream=False)
        assert whole.ok and 1 <= whole.usage.output_tokens <= 8
