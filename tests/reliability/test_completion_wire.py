"""Completion mode (issue 15) against a hostile loopback server: a ``mode: completion`` model
is asked through ``POST /v1/completions`` (a ``prompt``, the model's ``stop`` and
``params``), and what comes back (``choices[0].text`` chunks, usage, errors) goes through
the same checks as a chat stream: bad JSON, text that is not a string, usage that is text
or NaN, a stream cut short. Fuzzed bodies too, with the invariants of ``test_wire``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timmy_magic import ChatRequest
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Message, Result
from timmy_magic.model.errors import RoutingError
from timmy_magic.routing.router import Router

from ..support.scriptserver import ScriptServer, sse
from .conftest import Figures
from .test_wire import FUZZ, _ask, _check, json_values, surrogate_text

MODEL = ("{name: m, mode: completion, temperature: 0.2, stop: [\"\\n\\n\", '<end_of_turn>'],"
         " params: {repeat_penalty: 1.1, top_k: 40}}")


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def router(server: ScriptServer) -> Iterator[Router]:
    with Router(parse_config(
            "cascade: {max_retries_per_provider: 0, timeout_seconds: 5, idle_timeout_seconds: 3,"
            " first_token_timeout_seconds: 3, circuit_breaker: {failure_threshold: 100000}}\n"
            f"providers:\n  - {{name: p, type: openai_compatible, base_url: '{server.url}',"
            f" models: [{MODEL}]}}\n", source="t.yaml", env={})) as r:
        yield r


def text(t: object, finish: str | None = None, **extra: object) -> bytes:
    return sse({"model": "m", "object": "text_completion",
                "choices": [{"index": 0, "text": t, "finish_reason": finish}], **extra})


DONE = b"data: [DONE]\n\n"
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})


def one(server: ScriptServer, r: Router, reads: list[bytes], **kw: object
        ) -> Result | RoutingError:
    server.script(reads, **kw)  # type: ignore[arg-type]
    out = _ask(r)
    _check(r, out)
    return out  # type: ignore[return-value]


def test_a_completion_model_is_asked_on_v1_completions_with_its_defaults(
        server: ScriptServer, router: Router) -> None:
    out = one(server, router, [text(" red,"), text(" blue"), text(" and yellow.", "stop"),
                               USAGE, DONE])
    assert isinstance(out, Result) and out.ok and out.text == " red, blue and yellow."
    assert out.usage.input_tokens == 5 and out.usage.output_tokens == 3
    assert not out.usage.estimated and out.model == "m"
    path, body = server.last_post  # type: ignore[misc]
    assert path == "/v1/completions"
    assert body["prompt"] == "hi" and "messages" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 8
    assert body["stop"] == ["\n\n", "<end_of_turn>"]
    assert body["repeat_penalty"] == 1.1 and body["top_k"] == 40


def test_a_request_temperature_wins_over_the_models(server: ScriptServer,
                                                    router: Router) -> None:
    server.script([text("x", "stop"), DONE])
    assert router.complete("hi", temperature=0.9, max_tokens=4).ok
    assert server.last_post[1]["temperature"] == 0.9  # type: ignore[index]


def test_system_and_history_are_a_plain_transcript_before_the_prompt(
        server: ScriptServer, router: Router) -> None:
    server.script([text(" to read.", "stop"), DONE])
    req = ChatRequest((Message("system", "Be brief."), Message("user", "My name is Ada."),
                       Message("assistant", "Hello Ada."), Message("user", "Ada likes")))
    assert router.complete(req).ok
    body = server.last_post[1]  # type: ignore[index]
    assert body["prompt"] == ("Be brief.\n\nUser: My name is Ada.\nAssistant: Hello Ada."
                              "\n\nAda likes")
    assert body["stop"] == ["\n\n", "<end_of_turn>", "\nUser:"]


def test_without_usage_the_counts_are_estimated(server: ScriptServer,
                                                router: Router) -> None:
    out = one(server, router, [text("four words of text", "length"), DONE])
    assert isinstance(out, Result) and out.ok and out.usage.estimated
    assert out.usage.output_tokens and "~" in out.footer()


@pytest.mark.parametrize("usage", [b'"12"', b"NaN", b"1e999", b"-3", b"1.5", b"true"])
def test_usage_that_is_not_a_count_is_estimated(server: ScriptServer, router: Router,
                                                usage: bytes) -> None:
    tail = (b'data: {"choices": [], "usage": {"prompt_tokens": ' + usage
            + b', "completion_tokens": ' + usage + b"}}\n\n")
    out = one(server, router, [text("four words of text", "stop"), tail, DONE])
    assert isinstance(out, Result) and out.ok and out.usage.estimated
    assert out.usage.output_tokens is not None and out.usage.output_tokens >= 1


@pytest.mark.parametrize("bad", [7, {"x": 1}, ["a", "b"], True])
def test_text_that_is_not_a_string_fails_before_the_first_token(
        server: ScriptServer, router: Router, bad: object) -> None:
    out = one(server, router, [text(bad, "stop"), DONE])
    assert isinstance(out, RoutingError) and "text is" in str(out)
    assert "not a string" in str(out)


@pytest.mark.parametrize("reads, words", [
    ([b"data: {not json\n\n", DONE], "not JSON"),
    ([b"data: [1, 2]\n\n", DONE], "not an object"),
    ([sse({"choices": ["just text"]}), DONE], "choices[0] is not an object"),
    ([sse({"error": {"message": "model exploded"}})], "model exploded"),
    ([b""], "empty stream"),
    ([text("half an ans")], "stream ended early"),
])
def test_hostile_streams_are_one_clear_error(server: ScriptServer, router: Router,
                                             reads: list[bytes], words: str) -> None:
    out = one(server, router, reads)
    if isinstance(out, Result):  # after the first token: the partial answer and the error
        assert out.error and words in out.error
    else:
        assert words in str(out)


def test_an_error_after_text_keeps_the_partial_answer(server: ScriptServer,
                                                      router: Router) -> None:
    out = one(server, router, [text("Paris is"), b"data: {broken\n\n"])
    assert isinstance(out, Result) and out.text == "Paris is"
    assert out.error and "not JSON" in out.error


def test_stream_false_reads_one_text_completion_body(server: ScriptServer,
                                                     router: Router) -> None:
    body = {"model": "m", "object": "text_completion",
            "choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    server.script([json.dumps(body).encode()], content_type="application/json")
    out = router.complete("The capital of France is", stream=False, max_tokens=4)
    assert out.ok and out.text == " Paris." and out.usage.output_tokens == 2
    path, sent = server.last_post  # type: ignore[misc]
    assert path == "/v1/completions" and sent["stream"] is False
    assert "stream_options" not in sent
    for bad in ({"choices": [{"text": 3}]}, {"choices": []}, [1]):
        server.script([json.dumps(bad).encode()], content_type="application/json")
        with pytest.raises(RoutingError, match="not a string|no choices|not an object"):
            router.complete("x", stream=False, max_tokens=4)


@st.composite
def completion_bodies(draw: st.DrawFn) -> list[bytes]:
    frames = []
    for _ in range(draw(st.integers(0, 5))):
        obj: object = {"model": draw(st.one_of(st.just("m"), json_values)),
                       "choices": [{"text": draw(st.one_of(st.text(max_size=12),
                                                           surrogate_text, json_values)),
                                    "finish_reason": draw(st.none() | st.just("stop"))}]}
        if draw(st.booleans()):
            obj["usage"] = {"prompt_tokens": draw(json_values),  # type: ignore[index]
                            "completion_tokens": draw(json_values)}
        if draw(st.integers(0, 9)) == 0:
            obj = draw(json_values)
        frames.append(b"data: " + json.dumps(obj).encode() + b"\n\n")
    if draw(st.booleans()):
        frames.append(DONE)
    body = b"".join(frames)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]


def test_fuzzed_completion_streams(server: ScriptServer, router: Router,
                                   figures: Figures) -> None:
    seen = {"answered": 0, "refused": 0}

    @FUZZ
    @given(completion_bodies())
    def case(reads: list[bytes]) -> None:
        server.script(reads)
        out = _ask(router)
        _check(router, out)
        seen["answered" if isinstance(out, Result) else "refused"] += 1

    case()
    figures.part("wire fuzzing", "fuzz cases").add("fuzz cases", sum(seen.values()))
    assert seen["answered"] and seen["refused"], seen
