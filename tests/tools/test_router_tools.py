"""The tool loop through the router, against a loopback server that plays each dialect's
answers turn by turn: calls assembled from streamed fragments, parallel calls run in
order, invalid arguments, unknown names, a denied call, an exception in a tool and a
model that never stops calling all go back to the model; what goes on the wire is each
dialect's own shape; a secret in a tool's result never reaches the wire; a provider
whose model cannot call tools is skipped with its reason in the trace."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from tests.support.scriptserver import ScriptServer
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Delta, Done
from timmy_magic.model.errors import NoProviderAvailable
from timmy_magic.model.tools import ToolRan
from timmy_magic.routing.router import Router
from timmy_magic.tools import PendingCall

from .wire import (
    anthropic_calls,
    anthropic_text,
    ollama_calls,
    ollama_text,
    openai_calls,
    openai_text,
)

CALLED: list[tuple[str, Any]] = []


def add(a: int, b: int) -> int:
    """Add two integers."""
    CALLED.append(("add", (a, b)))
    return a + b


def lookup(city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:
    """The temperature in a city."""
    CALLED.append(("lookup", (city, unit)))
    return {"city": city, "temperature": 21 if unit == "C" else 70, "unit": unit}


def broken(x: str) -> str:
    raise KeyError(f"no row {x}")


@pytest.fixture
def srv() -> Iterator[ScriptServer]:
    CALLED.clear()
    with ScriptServer() as s:
        yield s


def router(url: str, type_: str = "llama_cpp", caps: str = "[tools]", extra: str = "",
           more: str = "") -> Router:
    key = ", api_key: sk-ant-test-0000000000" if type_ == "anthropic" else ""
    text = ("cascade: {health_timeout_seconds: 1, max_retries_per_provider: 0, "
            "first_token_timeout_seconds: 5}\nproviders:\n"
            f"  - {{name: a, type: {type_}, base_url: '{url}'{key}, priority: 1, "
            f"models: [{{name: m, default: true, capabilities: {caps}{extra}}}]}}\n" + more)
    return Router(parse_config(text, source="t.yaml", env={}))


def bodies(srv: ScriptServer) -> list[dict[str, Any]]:
    return [b for _, b in srv.posts]


def test_streamed_fragments_and_parallel_calls_run_in_order_then_the_answer(srv):
    srv.turns(openai_calls(("c1", "add", '{"a": 2, "b": 3}'),
                           ("c2", "lookup", '{"city": "Oslo"}')),
              openai_text("5, and 21 C in Oslo."))
    with router(srv.url) as r:
        res = r.complete("add 2 and 3, and the weather in Oslo", tools=[add, lookup])
    assert res.ok and res.text == "5, and 21 C in Oslo." and res.rounds == 1
    assert CALLED == [("add", (2, 3)), ("lookup", ("Oslo", "C"))]
    assert [(c.name, c.arguments, c.result, c.approved) for c in res.tool_calls] == [
        ("add", {"a": 2, "b": 3}, "5", True),
        ("lookup", {"city": "Oslo", "unit": "C"},
         '{"city":"Oslo","temperature":21,"unit":"C"}', True)]
    first, second = bodies(srv)
    assert first["tools"][0] == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["a", "b"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
    assert first["tools"][1]["function"]["parameters"]["properties"]["unit"] == {
        "enum": ["C", "F"], "type": "string", "default": "C"}
    assert second["messages"][-3:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {
                "name": "add", "arguments": '{"a": 2, "b": 3}'}},
            {"id": "c2", "type": "function", "function": {
                "name": "lookup", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "tool", "tool_call_id": "c2",
         "content": '{"city":"Oslo","temperature":21,"unit":"C"}'}]
    assert "1 tool call" not in res.footer() and "2 tool calls in 1 round" in res.footer()


def test_invalid_arguments_unknown_names_and_exceptions_go_back_to_the_model(srv):
    srv.turns(openai_calls(("c1", "add", '{"a": "two", "b": 3}'),
                           ("c2", "rm_rf", '{}'),
                           ("c3", "broken", '{"x": "7"}'),
                           ("c4", "add", '{"a": 1')),
              openai_text("sorry"))
    with router(srv.url) as r:
        res = r.complete("go", tools=[add, broken])
    assert res.ok and res.text == "sorry" and CALLED == []
    errors = [c.error for c in res.tool_calls]
    assert errors[0].startswith("invalid arguments: a: Input should be a valid integer")
    assert errors[1] == "unknown tool 'rm_rf' (the tools are: add, broken)"
    assert errors[2] == "KeyError: 'no row 7'"
    assert errors[3].startswith("the arguments are not valid JSON")
    assert [c.approved for c in res.tool_calls] == [False, False, True, False]
    sent = [m for m in bodies(srv)[1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in sent] == [f"error: {e}" for e in errors]


def test_a_denied_call_goes_back_and_the_loop_goes_on(srv):
    asked: list[PendingCall] = []

    def approve(call: PendingCall) -> bool:
        asked.append(call)
        return call.name != "add"

    srv.turns(openai_calls(("c1", "add", '{"a": 2, "b": 3}'),
                           ("c2", "lookup", '{"city": "Rome", "unit": "F"}')),
              openai_text("done"))
    with router(srv.url) as r:
        res = r.complete("go", tools=[add, lookup], approve=approve)
    assert [p.line for p in asked] == ["add(a=2, b=3)", "lookup(city='Rome', unit='F')"]
    assert CALLED == [("lookup", ("Rome", "F"))]
    assert res.tool_calls[0].error == "denied by the user" and not res.tool_calls[0].approved
    assert bodies(srv)[1]["messages"][-2]["content"] == "error: denied by the user"


def test_a_model_that_never_stops_calling_ends_at_max_rounds_with_one_note(srv):
    srv.script(openai_calls(("c1", "add", '{"a": 1, "b": 1}')))
    with router(srv.url) as r:
        res = r.complete("loop", tools=[add], max_tool_rounds=3)
    assert srv.chats == 4 and len(CALLED) == 3 and res.rounds == 3
    assert res.ok and res.text == ""
    assert res.notes == (("stopped after 3 tool rounds (max_tool_rounds=3): the model still "
                         "asked for add(…); it did not run"),)


def test_a_secret_in_a_tool_result_never_reaches_the_wire(srv, monkeypatch):
    secret = "sk-live-" + "Q7x9" * 8
    monkeypatch.setenv("PAYMENTS_API_KEY", secret)

    def config() -> dict[str, str]:
        """The service's settings."""
        return {"endpoint": "https://pay.example", "key": secret}

    srv.turns(openai_calls(("c1", "config", "{}")), openai_text("ok"))
    with router(srv.url) as r:
        res = r.complete("show the config", tools=[config])
    wire = json.dumps(bodies(srv))
    assert secret not in wire and "***" in wire
    assert secret not in res.tool_calls[0].result


def test_the_stream_form_yields_each_call_as_it_runs(srv):
    srv.turns(openai_calls(("c1", "add", '{"a": 2, "b": 2}')), openai_text("four"))
    with router(srv.url) as r:
        events = list(r.stream("2+2", tools=[add]))
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("Done") == 1 and kinds[-1] == "Done"
    ran = [e for e in events if isinstance(e, ToolRan)]
    assert len(ran) == 1 and ran[0].record.line().startswith("add(a=2, b=2) → 4")
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "four"
    done = events[-1]
    assert isinstance(done, Done) and done.result.tool_calls[0].result == "4"


def test_the_async_forms_run_the_same_loop(srv):
    srv.turns(openai_calls(("c1", "add", '{"a": 1, "b": 2}')), openai_text("three"),
              openai_calls(("c2", "add", '{"a": 3, "b": 4}')), openai_text("seven"))

    async def both() -> tuple[str, list[Any]]:
        res = await r.acomplete("1+2", tools=[add])
        events = [ev async for ev in r.astream("3+4", tools=[add])]
        return res.text, events

    with router(srv.url) as r:
        text, events = asyncio.run(both())
    assert text == "three" and CALLED == [("add", (1, 2)), ("add", (3, 4))]
    assert isinstance(events[-1], Done) and events[-1].result.text == "seven"


def test_anthropic_tool_use_blocks_and_tool_results(srv):
    srv.turns(anthropic_calls(("tu_1", "add", {"a": 2, "b": 5}),
                              ("tu_2", "lookup", {"city": "Lima"}), text="Let me see."),
              anthropic_text("7; 21 C in Lima"))
    with router(srv.url, "anthropic") as r:
        res = r.complete("go", tools=[add, lookup])
    assert res.ok and res.text == "7; 21 C in Lima"
    assert CALLED == [("add", (2, 5)), ("lookup", ("Lima", "C"))]
    first, second = bodies(srv)
    assert first["tools"][0]["name"] == "add" and "input_schema" in first["tools"][0]
    assert second["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me see."},
            {"type": "tool_use", "id": "tu_1", "name": "add", "input": {"a": 2, "b": 5}},
            {"type": "tool_use", "id": "tu_2", "name": "lookup", "input": {"city": "Lima"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "tu_1", "content": "7"},
            {"type": "tool_result", "tool_use_id": "tu_2",
             "content": '{"city":"Lima","temperature":21,"unit":"C"}'}]}]


def test_ollama_tools_and_tool_messages(srv):
    srv.turns(ollama_calls(("add", {"a": 4, "b": 4}), ("add", {"a": 1, "b": 0})),
              ollama_text("8 and 1"), content_type="application/x-ndjson")
    with router(srv.url, "ollama") as r:
        res = r.complete("go", tools=[add])
    assert res.ok and res.text == "8 and 1" and CALLED == [("add", (4, 4)), ("add", (1, 0))]
    first, second = bodies(srv)
    assert first["tools"][0]["function"]["name"] == "add"
    assert second["messages"][-3:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 4, "b": 4}}},
            {"function": {"name": "add", "arguments": {"a": 1, "b": 0}}}]},
        {"role": "tool", "content": "8", "tool_name": "add"},
        {"role": "tool", "content": "1", "tool_name": "add"}]


def test_a_provider_that_cannot_call_tools_is_skipped_with_its_reason(srv):
    srv.turns(openai_calls(("c1", "add", '{"a": 1, "b": 1}')), openai_text("2"),
              openai_text("hi"))
    more = (f"  - {{name: b, type: llama_cpp, base_url: '{srv.url}', priority: 2, "
            f"models: [{{name: m2, default: true, capabilities: [tools]}}]}}\n")
    with router(srv.url, caps="[]", more=more) as r:
        res = r.complete("1+1", tools=[add])
        plain = r.complete("hello")  # no tools: a is tried first, as always
        skip = res.trace.skipped[0]
    assert res.provider == "b" and res.text == "2"
    assert (skip.provider, skip.reason) == ("a", "no_tools")
    assert str(skip) == "a skipped (no tools: model m lacks capabilities: [tools])"
    assert plain.provider == "a"


def test_no_provider_that_can_call_tools_is_a_clear_error(srv):
    with router(srv.url, caps="[vision]") as r, pytest.raises(NoProviderAvailable) as err:
        r.complete("1+1", tools=[add])
    assert "no tools: model m lacks capabilities: [tools]" in str(err.value)
    assert srv.chats == 0


def test_a_tool_request_without_tool_calls_is_an_ordinary_answer(srv):
    srv.turns(openai_text("no tools needed"))
    with router(srv.url) as r:
        res = r.complete("hi", tools=[add])
    assert res.text == "no tools needed" and res.rounds == 0 and res.tool_calls == ()
    assert "tool" not in res.footer()


def test_not_a_function_is_a_one_line_error(srv):
    with router(srv.url) as r:
        with pytest.raises(Exception, match="a tool is a function or a method, not int"):
            r.complete("x", tools=[3])
        with pytest.raises(Exception, match="two tools have the same name"):
            r.complete("x", tools=[add, add])


def test_one_body_answers_carry_their_calls(srv):
    body = {"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {
                "name": "add", "arguments": '{"a": 6, "b": 7}'}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5}}
    done = {"model": "m", "choices": [{"finish_reason": "stop", "message": {
        "role": "assistant", "content": "13"}}]}
    srv.turns([json.dumps(body).encode()], [json.dumps(done).encode()],
              content_type="application/json")
    with router(srv.url) as r:
        res = r.complete("6+7", tools=[add], stream=False)
    assert res.text == "13" and CALLED == [("add", (6, 7))]
    assert bodies(srv)[0]["stream"] is False and "tools" in bodies(srv)[0]


def test_arguments_split_into_one_character_fragments_are_joined(srv):
    args = '{"city": "Zürich", "unit": "F"}'
    srv.turns(openai_calls(("c1", "lookup", args), pieces=len(args)), openai_text("70 F"))
    with router(srv.url) as r:
        res = r.complete("weather", tools=[lookup])
    assert CALLED == [("lookup", ("Zürich", "F"))] and res.text == "70 F"


@pytest.mark.parametrize("calls,why", [
    ('"not a list"', "tool_calls is not a list"),
    ('[{"index": 0, "function": {"arguments": "{}"}}]', "has no function name"),
    ('[{"index": 0, "function": {"name": "add", "arguments": 42}}]',
     "arguments are int, not text"),
    ('[{"index": 0, "function": {"name": ["add"]}}]', "name is not a short string"),
])
def test_a_malformed_call_on_the_wire_is_that_providers_protocol_error(srv, calls, why):
    from tests.support.scriptserver import sse
    from tests.tools.wire import DONE

    srv.script([sse({"model": "m", "choices": [{"delta": {
        "tool_calls": json.loads(calls)}}]}),
        sse({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}), DONE])
    with router(srv.url) as r, pytest.raises(NoProviderAvailable) as err:
        r.complete("go", tools=[add])
    assert why in str(err.value) and CALLED == []


def test_the_prompted_protocol_on_the_wire(srv):
    """A completion-mode model: the tools described in the prompt, the reply held by the
    schema (llama-server's ``json_schema``), the JSON reply turned into a call, its
    result written into the next prompt, and the answer passed on as text."""
    from tests.support.scriptserver import sse

    def completion(text: str) -> list[bytes]:
        return [sse({"model": "m", "choices": [{"text": text, "finish_reason": "stop"}]}),
                b"data: [DONE]\n\n"]

    srv.turns(completion('{"tool": "add", "arguments": {"a": 20, "b": 22}}'),
              completion('{"answer": "It is 42."}'))
    with router(srv.url, extra=", mode: completion") as r:
        events = list(r.stream("What is 20 + 22?", tools=[add, lookup]))
    done = events[-1]
    assert isinstance(done, Done) and done.result.text == "It is 42."
    assert [e.text for e in events if isinstance(e, Delta)] == ["It is 42."]  # no JSON shown
    assert CALLED == [("add", (20, 22))]
    first, second = bodies(srv)
    assert "tools" not in first and "add(a, b): Add two integers." in first["prompt"]
    options = first["json_schema"]["anyOf"]
    assert options[0]["properties"]["tool"] == {"const": "add"}
    assert options[0]["properties"]["arguments"]["required"] == ["a", "b"]
    assert options[-1]["required"] == ["answer"]
    assert 'Assistant: {"tool": "add", "arguments": {"a": 20, "b": 22}}' in second["prompt"]
    assert second["prompt"].endswith("Result of add: 42\n\nThe question was: What is 20 + "
                                     "22?\nIf the results answer it, reply with the answer.")


def test_a_prompted_reply_that_breaks_the_schema_is_asked_again(srv):
    from tests.support.scriptserver import sse

    def completion(text: str) -> list[bytes]:
        return [sse({"model": "m", "choices": [{"text": text, "finish_reason": "stop"}]}),
                b"data: [DONE]\n\n"]

    srv.turns(completion('{"tool": "rm", "arguments": {}}'),
              completion('{"answer": "fine"}'))
    with router(srv.url, extra=", mode: completion") as r:
        res = r.complete("go", tools=[add])
    assert res.text == "fine" and srv.chats == 2 and CALLED == []
    assert "That answer is not valid" in bodies(srv)[1]["prompt"]
