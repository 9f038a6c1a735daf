"""An answer the server ended at the token limit says so (a note under it), in every
dialect, streamed or in one body; one that ended by itself says nothing. A loopback
server sends exactly the bytes each dialect would; the real llama-server case is in
tests/integration/test_router_real.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.scriptserver import ScriptServer
from timmy_magic.config import parse_config
from timmy_magic.providers.base import LIMIT_NOTE
from timmy_magic.routing.router import Router


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n".encode()


def openai(finish: str) -> list[bytes]:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    return [sse({**chunk, "choices": [{"index": 0, "delta": {"content": "one two"},
                                        "finish_reason": None}]}),
            sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
            sse({**chunk, "choices": [], "usage": {"prompt_tokens": 3,
                                                   "completion_tokens": 2}}),
            b"data: [DONE]\n\n"]


def anthropic(stop: str) -> list[bytes]:
    return [sse({"type": "message_start", "message": {"model": "m", "usage": {
                "input_tokens": 3}}}, "message_start"),
            sse({"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            sse({"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": "one two"}}, "content_block_delta"),
            sse({"type": "message_delta", "delta": {"stop_reason": stop},
                 "usage": {"output_tokens": 2}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


def ollama(reason: str) -> list[bytes]:
    lines = [{"model": "m", "message": {"role": "assistant", "content": "one two"},
              "done": False},
             {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
              "done_reason": reason, "prompt_eval_count": 3, "eval_count": 2}]
    return [(json.dumps(x) + "\n").encode() for x in lines]


DIALECTS = {
    "llama_cpp": (openai, "length", "stop", "text/event-stream"),
    "anthropic": (anthropic, "max_tokens", "end_turn", "text/event-stream"),
    "ollama": (ollama, "length", "stop", "application/x-ndjson"),
}


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.mark.parametrize("kind", sorted(DIALECTS))
def test_a_cut_answer_says_it_stopped_at_the_token_limit(server: ScriptServer,
                                                         kind: str) -> None:
    make, cut, whole, ctype = DIALECTS[kind]
    key = "\n    api_key: k" if kind == "anthropic" else ""
    cfg = parse_config(f"providers:\n  - name: p\n    type: {kind}\n"
                       f"    base_url: {server.url}{key}\n", source="t.yaml", env={})
    with Router(cfg) as router:
        server.script(make(cut), content_type=ctype)
        res = router.complete("count", max_tokens=2, model="m")
        assert res.ok and res.text == "one two" and LIMIT_NOTE in res.notes
        server.script(make(whole), content_type=ctype)
        res = router.complete("count", max_tokens=2, model="m")
        assert res.ok and LIMIT_NOTE not in res.notes


def test_one_body_answer_cut_at_the_limit_says_so_too(server: ScriptServer) -> None:
    body = {"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "one two"},
         "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    cfg = parse_config(f"providers:\n  - name: p\n    type: llama_cpp\n"
                       f"    base_url: {server.url}\n", source="t.yaml", env={})
    with Router(cfg) as router:
        server.script([json.dumps(body).encode()], content_type="application/json")
        res = router.complete("count", max_tokens=2, stream=False)
        assert res.ok and LIMIT_NOTE in res.notes
