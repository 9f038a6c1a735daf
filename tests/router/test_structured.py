"""Structured output through the router, against loopback servers the tests control:
each dialect's native constrained-decoding field on the wire, validation in the kernel,
one retry on the same provider with the error fed back, then failover (or, pinned, the
invalid answer with its error), and the events a live display sees."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from tests.support.fake_ollama import FakeOllama
from tests.support.faultserver import FaultServer
from timmy_magic import ChatRequest
from timmy_magic.model.chat import Delta, Discard, Done, Trying
from timmy_magic.model.schema import Schema

from .test_router_faults import make_router, prov


class City(BaseModel):
    city: str
    country: str


GOOD = '{"city": "Paris", "country": "France"}'
BAD = '{"city": "Paris"}'
NOT_JSON = "Paris is the capital of France."

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                 "population": {"type": "integer"}},
               "required": ["city", "population"], "additionalProperties": False}


@pytest.fixture(scope="module")
def srv():
    with FaultServer() as s:
        yield s


def seq(srv: FaultServer, *texts: str, **kw: object) -> str:
    return srv.base_url("sequence", texts=json.dumps(list(texts)), **kw)


def chats(srv: FaultServer, marker: str) -> list[dict]:
    return [r.json for r in srv.requests if marker in r.path and r.method == "POST"]


def test_valid_answer_gives_the_model_instance_and_sends_response_format(srv):
    url = seq(srv, GOOD, case="valid")
    with make_router(prov("a", url, 1)) as r:
        res = r.complete("Where is the Eiffel tower?", schema=City)
    assert res.ok and isinstance(res.data, City)
    assert res.data == City(city="Paris", country="France")
    assert res.text == GOOD
    body = chats(srv, "case=valid")[-1]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["schema"] == City.model_json_schema()
    assert fmt["json_schema"]["strict"] is False  # pydantic leaves objects open
    # the schema is told in words too (servers without constrained decoding)
    assert body["messages"][0]["role"] == "system"
    assert '"country"' in body["messages"][0]["content"]


def test_a_closed_dict_schema_is_sent_strict_and_validated_as_json(srv):
    url = seq(srv, '{"city": "Oslo", "population": 709000}', case="dict")
    with make_router(prov("a", url, 1)) as r:
        res = r.complete("Oslo?", schema=CITY_SCHEMA)
    assert res.data == {"city": "Oslo", "population": 709000}
    assert chats(srv, "case=dict")[-1]["response_format"]["json_schema"]["strict"] is True


def test_invalid_then_valid_retries_once_on_the_same_provider_with_the_error(srv):
    url = seq(srv, BAD, GOOD, case="retry")
    with make_router(prov("a", url, 1) + prov("b", seq(srv, GOOD, case="b1"), 2)) as r:
        events = list(r.stream("Where?", schema=City))
    res = events[-1].result
    assert isinstance(events[-1], Done) and res.ok and res.provider == "a"
    assert res.data == City(city="Paris", country="France")
    kinds = [type(e).__name__ for e in events if not isinstance(e, Delta)]
    assert kinds == ["Trying", "Discard", "Trying", "Done"]
    discard = next(e for e in events if isinstance(e, Discard))
    assert discard.reason.startswith("invalid JSON: country") and "Field required" in \
        discard.reason
    # the retry carries the invalid answer and what was wrong with it
    second = chats(srv, "case=retry")[-1]["messages"]
    assert second[-2] == {"role": "assistant", "content": BAD}
    assert "country" in second[-1]["content"] and second[-1]["role"] == "user"
    outcomes = [(a.provider, a.outcome) for a in res.trace.attempts]
    assert outcomes == [("a", "invalid"), ("a", "answered")]
    assert "a#1 answered, invalid JSON: country" in "\n".join(res.trace.lines())
    assert not chats(srv, "case=b1")  # never needed


def test_invalid_twice_fails_over_to_the_next_provider(srv):
    providers = prov("a", seq(srv, NOT_JSON, case="fo-a"), 1) + prov(
        "b", seq(srv, GOOD, case="fo-b"), 2)
    with make_router(providers) as r:
        res = r.complete("Where?", schema=City)
    assert res.ok and res.provider == "b" and res.data.city == "Paris"
    assert [(a.provider, a.outcome) for a in res.trace.attempts] == [
        ("a", "invalid"), ("a", "invalid"), ("b", "answered")]
    assert res.trace.attempts[0].error.startswith("invalid JSON: not valid JSON")
    assert len(chats(srv, "case=fo-a")) == 2
    # the next provider is asked afresh (not with the first one's failed exchange)
    assert len(chats(srv, "case=fo-b")[-1]["messages"]) == 2
    # an invalid answer is not the server's fault: its circuit stays closed
    assert r.metrics()["a"].circuit == "closed"


def test_when_nothing_matches_the_result_holds_the_last_answer_and_its_error(srv):
    providers = prov("a", seq(srv, BAD, case="all-a"), 1) + prov(
        "b", seq(srv, NOT_JSON, case="all-b"), 2)
    with make_router(providers) as r:
        res = r.complete("Where?", schema=City)
    assert not res.ok and res.data is None
    assert res.error.startswith("invalid JSON:") and res.provider == "b"
    assert res.text == NOT_JSON
    assert [a.outcome for a in res.trace.attempts] == ["invalid"] * 4
    assert res.trace.answered_by is None


def test_pinned_an_invalid_answer_never_fails_over(srv):
    providers = prov("a", seq(srv, BAD, case="pin-a"), 1) + prov(
        "b", seq(srv, GOOD, case="pin-b"), 2)
    with make_router(providers) as r:
        res = r.complete(ChatRequest.of("Where?", provider="a", schema=City))
    assert not res.ok and res.provider == "a" and "country" in res.error
    assert len(chats(srv, "case=pin-a")) == 2 and not chats(srv, "case=pin-b")


def test_one_body_mode_validates_too(srv):
    url = seq(srv, BAD, GOOD, case="whole")
    with make_router(prov("a", url, 1)) as r:
        res = r.complete("Where?", schema=City, stream=False)
    assert res.ok and res.data.country == "France"
    bodies = chats(srv, "case=whole")
    assert [b["stream"] for b in bodies] == [False, False]


def test_a_fenced_answer_is_accepted(srv):
    url = seq(srv, f"```json\n{GOOD}\n```", case="fence")
    with make_router(prov("a", url, 1)) as r:
        assert r.complete("Where?", schema=City).data.city == "Paris"


def test_anthropic_gets_a_forced_tool_and_its_input_is_the_answer(srv):
    url = seq(srv, GOOD, case="anthropic")
    with make_router(prov("c", url, 1, "api_key: sk-ant-test, models: [{name: claude-x}]",
                          type_="anthropic")) as r:
        res = r.complete("Where?", schema=City)
    assert res.ok and res.data == City(city="Paris", country="France")
    body = chats(srv, "case=anthropic")[-1]
    assert body["tool_choice"] == {"type": "tool", "name": "City"}
    assert body["tools"][0]["input_schema"] == City.model_json_schema()
    assert not res.notes  # our own tool is the answer, not "a tool call not shown"


def test_ollama_gets_format_with_the_schema():
    with FakeOllama(text=GOOD) as ollama:
        cfg = prov("o", ollama.url, 1, "models: [{name: llama3.2}]", type_="ollama")
        with make_router(cfg) as r:
            res = r.complete("Where?", schema=City)
        body = [q.json for q in ollama.requests if q.path == "/api/chat"][-1]
    assert res.ok and res.data.country == "France"
    assert body["format"] == City.model_json_schema()


def test_a_type_pydantic_can_validate_works_as_a_schema(srv):
    url = seq(srv, f"[{GOOD}, {GOOD}]", case="list")
    with make_router(prov("a", url, 1)) as r:
        res = r.complete("Two cities?", schema=list[City])
    assert res.ok and [c.city for c in res.data] == ["Paris", "Paris"]
    assert chats(srv, "case=list")[-1]["response_format"]["json_schema"]["name"] == "list"


@pytest.mark.parametrize("bad, why", [
    (42, "not int"),
    ("City", "not str"),
    ({"type": "objekt"}, "not a valid JSON schema"),
    ({"properties": {"a": {"type": 5}}}, "properties/a/type"),
    (object(), "cannot make a JSON schema"),
])
def test_what_is_not_a_schema_is_a_one_line_error(bad, why):
    from timmy_magic.model.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        ChatRequest.of("x", schema=bad)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_schema_is_made_once_and_carried_by_the_request():
    req = ChatRequest.of("x", schema=City)
    assert isinstance(req.schema, Schema) and req.schema.source is City
    assert ChatRequest.of(req).schema is req.schema


def test_trying_after_discard_names_a_second_attempt(srv):
    url = seq(srv, BAD, GOOD, case="numbers")
    with make_router(prov("a", url, 1)) as r:
        tries = [e.number for e in r.stream("x", schema=City) if isinstance(e, Trying)]
    assert tries == [1, 2]


def test_a_hostile_answer_nested_past_the_recursion_limit_is_just_invalid(srv):
    url = seq(srv, "", deep=5000, case="deep")
    with make_router(prov("a", url, 1)) as r:
        res = r.complete(ChatRequest.of("x", schema={"type": "array"}, provider="a"))
        assert not res.ok and res.error == "invalid JSON: nested too deeply to check"
        assert r.complete("still fine").ok


def test_a_configured_key_a_server_echoes_into_the_answer_is_masked(srv):
    """A hostile server puts the request's Authorization header into the answer's text:
    the kept answer (and so the cache, history, renders) and the live display mask the
    configured key; text that merely looks like a credential is the model's to say."""
    from timmy_magic.model.chat import Delta
    from timmy_magic.notebook.display.render import NotebookView

    key = "canary-key-7f3e9a1b2c4d5e6f"
    url = srv.base_url("echo", mode="text", case="echo-key")
    with make_router(prov("a", url, 1, f"api_key: {key}", type_="openai_compatible")) as r:
        events = list(r.stream("hi"))
    res = events[-1].result
    streamed = "".join(e.text for e in events if isinstance(e, Delta))
    assert "authorization" in streamed.lower() and key[-8:] in streamed  # it was echoed
    assert key not in res.text and key[-8:] not in res.text and res.ok
    view = NotebookView("markdown", per_second=0.0)
    view._parts = [streamed]
    assert key not in str(view._live_bundle())
    assert NotebookView("markdown")._parts == []  # (a fresh view holds nothing)
    from timmy_magic.privacy.redact import REDACT

    assert REDACT.known("password=hunter2 in an example") == "password=hunter2 in an example"
