"""Scripted answers of each dialect that ask for tool calls, for the loopback ScriptServer."""

from __future__ import annotations

import json
from typing import Any

from tests.support.scriptserver import sse

DONE = b"data: [DONE]\n\n"


def openai_text(text: str) -> list[bytes]:
    return [sse({"model": "m", "choices": [{"delta": {"content": text}}]}),
            sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}), DONE]


def openai_calls(*calls: tuple[str, str, str], pieces: int = 3) -> list[bytes]:
    """Each (id, name, arguments) streamed as OpenAI does: the first fragment holds the id
    and name, then the arguments in ``pieces`` fragments; parallel calls interleaved."""
    out = [sse({"model": "m", "choices": [{"delta": {"role": "assistant"}}]})]
    for i, (cid, name, _) in enumerate(calls):
        out.append(sse({"choices": [{"delta": {"tool_calls": [{
            "index": i, "id": cid, "type": "function",
            "function": {"name": name, "arguments": ""}}]}}]}))
    for k in range(pieces):
        for i, (_, _, args) in enumerate(calls):
            step = -(-len(args) // pieces)
            frag = args[k * step:(k + 1) * step]
            out.append(sse({"choices": [{"delta": {"tool_calls": [{
                "index": i, "function": {"arguments": frag}}]}}]}))
    out += [sse({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}), DONE]
    return out


def anthropic_calls(*calls: tuple[str, str, dict[str, Any]], text: str = "") -> list[bytes]:
    out = [sse({"type": "message_start", "message": {"model": "c", "usage": {
        "input_tokens": 5}}}, "message_start")]
    index = 0
    if text:
        out += [sse({"type": "content_block_start", "index": 0, "content_block": {
            "type": "text", "text": ""}}, "content_block_start"),
            sse({"type": "content_block_delta", "index": 0, "delta": {
                "type": "text_delta", "text": text}}, "content_block_delta")]
        index = 1
    for i, (cid, name, args) in enumerate(calls, start=index):
        raw = json.dumps(args)
        out += [sse({"type": "content_block_start", "index": i, "content_block": {
            "type": "tool_use", "id": cid, "name": name, "input": {}}}, "content_block_start"),
            sse({"type": "content_block_delta", "index": i, "delta": {
                "type": "input_json_delta", "partial_json": raw[:5]}}, "content_block_delta"),
            sse({"type": "content_block_delta", "index": i, "delta": {
                "type": "input_json_delta", "partial_json": raw[5:]}}, "content_block_delta"),
            sse({"type": "content_block_stop", "index": i}, "content_block_stop")]
    out += [sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                 "usage": {"output_tokens": 9}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]
    return out


def anthropic_text(text: str) -> list[bytes]:
    return [sse({"type": "message_start", "message": {"model": "c", "usage": {
        "input_tokens": 5}}}, "message_start"),
        sse({"type": "content_block_delta", "index": 0, "delta": {
            "type": "text_delta", "text": text}}, "content_block_delta"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 3}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop")]


def ollama_lines(*objs: dict[str, Any]) -> list[bytes]:
    return [(json.dumps(o) + "\n").encode() for o in objs]


def ollama_calls(*calls: tuple[str, dict[str, Any]]) -> list[bytes]:
    return ollama_lines(
        {"model": "llama3.2", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": n, "arguments": a}} for n, a in calls]}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 4})


def ollama_text(text: str) -> list[bytes]:
    return ollama_lines(
        {"model": "llama3.2", "message": {"role": "assistant", "content": text}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 4})
