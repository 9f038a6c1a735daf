"""A model name the provider does not configure, asked of a server that serves only its
own (llama-server answers whatever name it is asked), is said under the answer: the
header named one model and another answered. The same name (give or take a tag or a
path), or no name, says nothing. (With ``models:`` configured, the planner already skips
a provider that does not list the name.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.scriptserver import ScriptServer
from timmy_magic.config import parse_config
from timmy_magic.routing.router import Router


def answer_as(model: str) -> list[bytes]:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": model}
    return [f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': {'content': 'hi'}, 'finish_reason': 'stop'}]})}\n\n".encode(),
            f"data: {json.dumps({**chunk, 'choices': [], 'usage': {'prompt_tokens': 1, 'completion_tokens': 1}})}\n\n".encode(),
            b"data: [DONE]\n\n"]


@pytest.fixture
def router() -> Iterator[tuple[Router, ScriptServer]]:
    with ScriptServer() as srv:
        cfg = parse_config(f"providers:\n  - name: p\n    type: llama_cpp\n"
                           f"    base_url: {srv.url}\n",
                           source="t.yaml", env={})
        with Router(cfg) as r:
            yield r, srv


def test_an_unconfigured_model_answered_by_another_says_so(
        router: tuple[Router, ScriptServer]) -> None:
    r, srv = router
    srv.script(answer_as("gemma"))
    res = r.complete("hi", model="qwen-7b")
    assert res.ok and res.model == "gemma"
    assert any("asked for model 'qwen-7b', which p does not configure; the server "
               "answered as 'gemma'" in n for n in res.notes), res.notes


@pytest.mark.parametrize("asked", ["gemma", None, "GEMMA:latest", "models/gemma.gguf"])
def test_a_configured_or_default_model_says_nothing(router: tuple[Router, ScriptServer],
                                                    asked: str | None) -> None:
    r, srv = router
    srv.script(answer_as("gemma"))
    res = r.complete("hi", model=asked)
    assert res.ok and not any("does not configure" in n for n in res.notes)
