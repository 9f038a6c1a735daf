"""Structured output (issue 14) against real servers: llama-server with the real Gemma 3
270M (the shipped completion-mode local-gemma and the same server through chat) under a
``json_schema`` response format, and vllm-mlx with its own constrained decoding on the
tiny random model, whose words are noise: only constrained decoding can make its answer
JSON that matches the schema, so a valid ``.data`` there proves the schema reached it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.integration.test_completion_mode import make, shipped_gemma
from timmy_magic import ChatRequest

pytestmark = pytest.mark.integration


class City(BaseModel):
    city: str
    country: str


def test_gemma_under_a_json_schema_answers_the_city_and_country(llama_server):
    base = llama_server.base_url
    with make(f"  - {{name: local-gemma, type: llama_cpp, base_url: '{base}', "
              f"models: [{shipped_gemma()}]}}\n"
              f"  - {{name: as-chat, type: llama_cpp, base_url: '{base}', priority: 200, "
              f"models: [{{name: gemma-3-270m, temperature: 0}}]}}\n") as r:
        # seen: {"city": "Paris", "country": "France"} (completion mode, json_schema)
        res = r.complete("Where is the Eiffel Tower?", provider="local-gemma", schema=City)
        assert res.ok and isinstance(res.data, City), (res.text, res.error)
        assert res.data.city == "Paris" and res.data.country == "France", res.data
        assert [a.outcome for a in res.trace.attempts] == ["answered"]
        # chat through the same server: response_format held it to the schema
        chat = r.complete("Where is the Eiffel Tower?", provider="as-chat", schema=City,
                          max_tokens=64)
        assert chat.ok and isinstance(chat.data, City), (chat.text, chat.error)
        # a JSON-schema dict: plain JSON values back, closed object sent strict
        schema = {"type": "object", "properties": {"colors": {
            "type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}},
            "required": ["colors"], "additionalProperties": False}
        colors = r.complete("The three primary colors are", provider="local-gemma",
                            schema=schema)
        assert colors.ok and isinstance(colors.data, dict), (colors.text, colors.error)
        assert len(colors.data["colors"]) == 3
        assert all(isinstance(c, str) for c in colors.data["colors"])


def test_vllm_mlx_schema_request_answers_or_fails_over_to_llama_server(
        vllm_mlx_server, llama_server):
    """vllm-mlx 0.6.0 builds its json_schema token mask with a Metal kernel (llguidance's
    ``mlx`` module): on Apple Silicon it answers; on this Linux CPU it answers HTTP 500
    (its log: "No Metal back-end"). Either way the cell gets valid data: from vllm-mlx,
    or from the next provider after a one-line failure in the trace."""
    srv = vllm_mlx_server
    with make(f"  - {{name: v, type: vllm_mlx, base_url: '{srv.base_url}', priority: 1, "
              f"models: [{{name: {srv.model}, temperature: 0}}]}}\n"
              f"  - {{name: local-gemma, type: llama_cpp, priority: 2, "
              f"base_url: '{llama_server.base_url}', models: [{shipped_gemma()}]}}\n") as r:
        body = r.complete(ChatRequest.of("Where is the Eiffel Tower?", schema=City))
        assert body.ok and isinstance(body.data, City), (body.text[:200], body.error)
        first = body.trace.attempts[0]
        assert first.provider == "v"
        if body.provider != "v":  # no Metal here: the server's 500, then failover
            assert first.outcome == "failed" and "HTTP 500" in (first.error or "")
            assert body.provider == "local-gemma" and body.data.city == "Paris"


def test_mlx_lm_ignores_the_schema_so_its_noise_is_an_invalid_answer(mlx_lm_server):
    """mlx_lm.server has no constrained decoding (it ignores response_format): the tiny
    model's noise is asked again once with the error, then kept with the error. One
    line, no traceback, and the text the model wrote is there to read."""
    with make(f"  - {{name: m, type: mlx_lm, base_url: '{mlx_lm_server.base_url}', "
              f"models: [{{name: default_model, temperature: 0}}]}}\n") as r:
        res = r.complete(ChatRequest.of("Where is the Eiffel Tower?", schema=City,
                                        max_tokens=24, provider="m"))
    assert not res.ok and res.data is None and res.provider == "m"
    assert res.error.startswith("invalid JSON:") and "\n" not in res.error
    assert [a.outcome for a in res.trace.attempts] == ["invalid", "invalid"]
    assert res.text  # what it wrote, kept
