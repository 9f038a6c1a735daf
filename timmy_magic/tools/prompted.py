"""Tools for a model without a native tool template (a base model asked as a completion,
the embedded Gemma 3 270M): the tools described in the system prompt, and the reply
constrained by a JSON schema, through the same path as ``--schema`` (llama-server's
grammar from ``json_schema``, ``response_format`` elsewhere, checked in the kernel and
asked again once when invalid).

The reply is one JSON object: ``{"tool": NAME, "arguments": {...}}`` to call a tool
(the schema lists each tool with its own parameters, so the grammar holds the model to a
real name and valid arguments), or ``{"answer": "..."}``. One call per turn. Earlier
calls and their results are written into the transcript as text.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from timmy_magic.model.chat import ChatRequest, Message, Result
from timmy_magic.model.schema import Schema
from timmy_magic.model.tools import ToolCall, ToolSpec

SCHEMA_NAME = "tool_call_or_answer"


def reply_schema(tools: tuple[ToolSpec, ...]) -> dict[str, Any]:
    """The JSON Schema of a reply: a call of one of ``tools`` or an answer. Each tool's
    ``$defs`` (nested pydantic models) are lifted to the top, where ``$ref`` finds them."""
    defs: dict[str, Any] = {}
    options: list[dict[str, Any]] = []
    for t in tools:
        params = dict(t.parameters)
        defs.update(params.pop("$defs", {}))
        options.append({"type": "object", "properties": {
            "tool": {"const": t.name}, "arguments": params},
            "required": ["tool", "arguments"], "additionalProperties": False})
    options.append({"type": "object", "properties": {"answer": {"type": "string"}},
                    "required": ["answer"], "additionalProperties": False})
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


def instruction(tools: tuple[ToolSpec, ...]) -> str:
    lines = ["You can call these tools:"]
    for t in tools:
        params = ", ".join(t.parameters.get("properties", {}))
        lines.append(f"- {t.name}({params}): {t.description or '(no description)'}")
    lines.append('To call a tool, reply with only a JSON object: {"tool": its name, '
                 '"arguments": an object of its arguments}. When you can answer, reply with '
                 'only a JSON object whose "answer" is your answer, in words.')
    return "\n".join(lines)


def request(req: ChatRequest) -> ChatRequest:
    """``req`` (with ``tools``) as a plain request with a schema: the tools described in
    the system prompt, earlier calls and results as text, no ``tools`` field."""
    told = instruction(req.tools)
    out: list[Message] = []
    for m in req.messages:
        if m.role == "assistant" and m.tool_calls:
            c = m.tool_calls[0]
            out.append(Message("assistant", json.dumps(
                {"tool": c.name, "arguments": _args(c)}, ensure_ascii=False)))
        elif m.role == "tool":
            out.append(Message("user", f"Result of {m.name or 'the tool'}: {m.text}"))
        else:
            out.append(Message(m.role, m.content))
    question = next((m.text for m in reversed(req.messages) if m.role == "user"), "")
    if req.messages and req.messages[-1].role == "tool" and question:
        # a small model repeats the call it just made unless the question comes back
        out[-1] = Message("user", f"{out[-1].text}\n\nThe question was: {question}\n"
                                  "If the results answer it, reply with the answer.")
    if out and out[0].role == "system":
        out[0] = Message("system", f"{out[0].text}\n\n{told}")
    else:
        out.insert(0, Message("system", told))
    return replace(req, messages=tuple(out), tools=(),
                   schema=Schema.of(reply_schema(req.tools), name=SCHEMA_NAME))


def result(res: Result, asked: ChatRequest) -> Result:
    """A reply to ``request(asked)`` as a tool turn (``calls``) or an answer (``text``)."""
    data = res.data
    if res.error is not None or not isinstance(data, dict):
        return res
    if "tool" in data:
        n = sum(1 for m in asked.messages if m.role == "tool") + 1
        call = ToolCall(f"call_{n}", str(data["tool"]),
                        json.dumps(data.get("arguments", {}), ensure_ascii=False))
        return replace(res, text="", data=None, calls=(call,))
    return replace(res, text=str(data.get("answer", "")), data=None)


def _args(c: ToolCall) -> Any:
    try:
        return c.parsed()
    except ValueError:
        return c.arguments
