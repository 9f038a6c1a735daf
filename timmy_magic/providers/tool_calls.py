"""Tool calls on the wire, per dialect: the ``tools`` a request offers, the calls and
results in its messages, and the calls a model's answer asks for, assembled from their
streamed fragments and checked (names and ids short strings, arguments JSON text).

- OpenAI Chat Completions (and every compatible server): ``tools: [{type: function,
  function: {name, description, parameters}}]``; an answer's ``delta.tool_calls`` come as
  fragments keyed by ``index`` (the first holds ``id`` and ``function.name``, the rest
  pieces of ``function.arguments``), several indexes for parallel calls; results go back
  as ``{role: tool, tool_call_id, content}``.
  https://platform.openai.com/docs/guides/function-calling
- Anthropic Messages: ``tools: [{name, description, input_schema}]``; a ``tool_use``
  content block per call whose input streams as ``input_json_delta``; results go back
  in one user message of ``tool_result`` blocks.
  https://docs.anthropic.com/en/docs/build-with-claude/tool-use
- Ollama ``/api/chat``: the OpenAI ``tools``; each call whole in ``message.tool_calls``
  (``arguments`` an object); results as ``{role: tool, tool_name, content}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from timmy_magic.model.chat import Message
from timmy_magic.model.tools import ToolCall, ToolSpec
from timmy_magic.providers.wire import WireError, fix_surrogates

MAX_NAME_CHARS = 128
MAX_ARGUMENT_CHARS = 1 << 20
MAX_CALLS = 128
"""Calls one answer may ask for: a server that sends more is broken or hostile."""


class CallAssembler:
    """Calls assembled from fragments, in the order their index first appeared."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def __bool__(self) -> bool:
        return bool(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    def part(self, index: Any, call_id: Any = None, name: Any = None,
             arguments: Any = None) -> None:
        if type(index) is not int or not 0 <= index < 1 << 31:
            raise WireError("a tool call's index is not a small non-negative integer")
        slot = self._calls.get(index)
        if slot is None:
            if len(self._calls) >= MAX_CALLS:
                raise WireError(f"more than {MAX_CALLS} tool calls in one answer")
            slot = self._calls[index] = ["", "", ""]
        if call_id is not None and not slot[0]:
            slot[0] = _short(call_id, "id")
        if name is not None:
            slot[1] += _short(name, "name")
        if arguments is not None:
            if isinstance(arguments, dict):  # a whole object (Ollama, some servers)
                arguments = json.dumps(arguments, ensure_ascii=False)
            if not isinstance(arguments, str):
                raise WireError(f"tool call arguments are {type(arguments).__name__}, "
                                "not text")
            slot[2] += arguments
            if len(slot[2]) > MAX_ARGUMENT_CHARS:
                raise WireError(f"tool call arguments longer than {MAX_ARGUMENT_CHARS} "
                                "characters")

    def openai_delta(self, calls: Any) -> None:
        """One chunk's ``delta.tool_calls`` (or a whole answer's ``message.tool_calls``)."""
        if not isinstance(calls, list):
            raise WireError("tool_calls is not a list")
        for i, c in enumerate(calls):
            if not isinstance(c, dict):
                raise WireError("a tool call is not an object")
            fn = c.get("function") or {}
            if not isinstance(fn, dict):
                raise WireError("a tool call's function is not an object")
            self.part(c.get("index", i), c.get("id"), fn.get("name"), fn.get("arguments"))

    def calls(self) -> tuple[ToolCall, ...]:
        out = []
        for n, (index, (call_id, name, args)) in enumerate(self._calls.items()):
            if not name:
                raise WireError(f"tool call {index!r} has no function name")
            out.append(ToolCall(call_id or f"call_{n + 1}", fix_surrogates(name),
                                fix_surrogates(args) or "{}"))
        return tuple(out)


def _short(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise WireError(f"a tool call's {what} is not a short string")
    return value


# ---------------------------------------------------------------- requests

def openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


def openai_message(m: Message, content: Any) -> dict[str, Any]:
    """A message of a tool conversation (``content`` already in the dialect)."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.text}
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["content"] = content or None
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
    return out


def anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools]


def anthropic_messages(messages: Sequence[Message], content: Any) -> list[dict[str, Any]]:
    """The conversation's non-system messages as Anthropic wants them: an assistant turn's
    calls as ``tool_use`` blocks, the results that follow it in one user message of
    ``tool_result`` blocks. ``content(m)``: a message's own content in the dialect."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id or "",
                     "content": m.text}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list) \
                    and out[-1]["content"] and out[-1]["content"][0].get("type") == "tool_result":
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.text}] if m.text else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name,
                        "input": _object(c)} for c in m.tool_calls]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": content(m)})
    return out


def ollama_message(m: Message, base: dict[str, Any]) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "content": m.text, "tool_name": m.name or ""}
    if m.tool_calls:
        base = {**base, "tool_calls": [{"function": {"name": c.name, "arguments": _object(c)}}
                                       for c in m.tool_calls]}
    return base


def _object(c: ToolCall) -> Any:
    """A call's arguments as an object (a dialect that wants one): ``{}`` if not JSON."""
    try:
        value = c.parsed()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
