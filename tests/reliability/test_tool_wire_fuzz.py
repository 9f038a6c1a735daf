"""Hostile tool-call streams, fuzzed: each dialect's tool-call shapes (OpenAI's fragments by
index, Anthropic's ``tool_use`` blocks with ``input_json_delta``, Ollama's whole calls)
with every field replaced at random by any JSON value, fragments dropped, duplicated and
interleaved with text, bodies split at random places. Through the real router and tool
loop, against a loopback server: each request ends with a Result or our own error (never
a foreign exception, never a hang); no tool runs with arguments its signature refuses;
nothing stays in flight.

Figures: fuzz cases per dialect, answered, refused, tool runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.scriptserver import ScriptServer
from tests.tools.wire import anthropic_calls, ollama_calls, openai_calls
from timmy_magic.config import parse_config
from timmy_magic.model.chat import Result
from timmy_magic.model.errors import RoutingError, TimmyError
from timmy_magic.routing.router import Router

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                               max_size=3),
    max_leaves=6)
names = st.one_of(st.sampled_from(["add", "nope", "", "add "]), json_values)
arguments = st.one_of(st.sampled_from(['{"a": 1', ', "b": 2}', "{}", "", '{"a": "x"}',
                                       '{"a": 1, "b": 2}', "}{"]), st.text(max_size=10),
                      json_values)
RAN: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two integers."""
    assert type(a) is int and type(b) is int  # the signature held: validated before
    RAN.append((a, b))
    return a + b


def sse(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def maybe(draw: st.DrawFn, value: object, clean: bool = False) -> object:
    """The value, or (one time in four, unless ``clean``) any JSON value in its place."""
    return draw(json_values) if not clean and draw(st.integers(0, 3)) == 0 else value


GOOD = '{"a": 1, "b": 2}'


@st.composite
def openai_body(draw: st.DrawFn) -> list[bytes]:
    frames = [sse({"model": "m", "choices": [{"delta": {"role": "assistant"}}]})]
    if draw(st.booleans()):  # a well-formed call, its arguments in random fragments
        cut = draw(st.integers(0, len(GOOD)))
        frames += [sse({"choices": [{"delta": {"tool_calls": [{
            "index": 0, "id": "c0", "type": "function",
            "function": {"name": "add", "arguments": GOOD[:cut]}}]}}]}),
            sse({"choices": [{"delta": {"tool_calls": [{
                "index": 0, "function": {"arguments": GOOD[cut:]}}]}}]})]
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 4)) == 0:
            frames.append(sse({"choices": [{"delta": {"content": draw(st.text(max_size=8))}}]}))
            continue
        frag: dict[str, Any] = {"index": maybe(draw, draw(st.integers(0, 2))),
                                "id": maybe(draw, "c1"), "type": maybe(draw, "function"),
                                "function": maybe(draw, {"name": draw(names),
                                                         "arguments": draw(arguments)})}
        for key in list(frag):
            if draw(st.integers(0, 5)) == 0:
                del frag[key]
        frames.append(sse({"choices": [{"delta": {"tool_calls": maybe(draw, [frag])}}]}))
    frames.append(sse({"choices": [{"delta": {}, "finish_reason": draw(
        st.sampled_from([None, "tool_calls", "stop", "length"]))}]}))
    if draw(st.booleans()):
        frames.append(b"data: [DONE]\n\n")
    return frames


@st.composite
def anthropic_body(draw: st.DrawFn) -> list[bytes]:
    out = [sse({"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 3}}}, "message_start")]
    for i in range(draw(st.integers(0, 3))):
        clean = draw(st.booleans())  # a well-formed block, its JSON cut anywhere
        index = maybe(draw, i, clean)
        name = "add" if clean else draw(names)
        out.append(sse({"type": "content_block_start", "index": index,
                        "content_block": maybe(draw, {"type": "tool_use", "id": f"t{i}",
                                                      "name": name, "input": {}}, clean)},
                       "content_block_start"))
        cut = draw(st.integers(0, len(GOOD)))
        parts = [GOOD[:cut], GOOD[cut:]] if clean else \
            [draw(arguments) for _ in range(draw(st.integers(0, 3)))]
        for part in parts:
            out.append(sse({"type": "content_block_delta", "index": maybe(draw, index, clean),
                            "delta": maybe(draw, {"type": "input_json_delta",
                                                  "partial_json": part}, clean)},
                           "content_block_delta"))
        if draw(st.booleans()):
            out.append(sse({"type": "content_block_stop", "index": index},
                           "content_block_stop"))
    out += [sse({"type": "message_delta", "delta": {"stop_reason": maybe(draw, "tool_use")},
                 "usage": {"output_tokens": 4}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]
    return out


@st.composite
def ollama_body(draw: st.DrawFn) -> list[bytes]:
    clean = draw(st.booleans())
    calls = [maybe(draw, {"function": maybe(draw, {
        "name": "add" if clean else draw(names), "arguments": maybe(
            draw, {"a": draw(st.integers(-3, 3)), "b": draw(st.integers(-3, 3))}, clean)},
        clean)}, clean) for _ in range(draw(st.integers(0, 3)))]
    lines = [{"model": "m", "message": {"role": "assistant", "content": "",
                                        "tool_calls": maybe(draw, calls)}, "done": False},
             {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
              "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2}]
    return [(json.dumps(o) + "\n").encode() for o in lines]


@st.composite
def split(draw: st.DrawFn, body: st.SearchStrategy[list[bytes]]) -> list[bytes]:
    """The body's bytes in reads cut at random places."""
    whole = b"".join(draw(body))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(whole)), max_size=5))))
    reads, prev = [], 0
    for c in [*cuts, len(whole)]:
        if c > prev:
            reads.append(whole[prev:c])
        prev = c
    return reads


BODIES = {"openai_compatible": openai_body(), "anthropic": anthropic_body(),
          "ollama": ollama_body()}


KNOWN_GOOD = {"openai_compatible": openai_calls(("c0", "add", GOOD)),
              "anthropic": anthropic_calls(("t0", "add", {"a": 1, "b": 2})),
              "ollama": ollama_calls(("add", {"a": 1, "b": 2}))}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _router(srv: ScriptServer, type_: str) -> Router:
    key = ", api_key: sk-canary-0123456789abcdef" if type_ == "anthropic" else ""
    return Router(parse_config(
        "cascade: {max_retries_per_provider: 0, timeout_seconds: 5, idle_timeout_seconds: 3,"
        " first_token_timeout_seconds: 3, circuit_breaker: {failure_threshold: 100000}}\n"
        f"providers:\n  - {{name: p, type: {type_}, base_url: '{srv.url}'{key},"
        " models: [{name: m, default: true, capabilities: [tools]}]}\n",
        source="t.yaml", env={}))


def _ask(r: Router) -> Result | TimmyError:
    box: list[object] = []

    def go() -> None:
        try:
            box.append(r.complete("1+1", tools=[add], approve=True, max_tool_rounds=2,
                                  max_tokens=8))
        except TimmyError as exc:
            box.append(exc)
        except BaseException as exc:  # what the test is looking for
            box.append(AssertionError(f"foreign exception escaped: {type(exc).__name__}: "
                                      f"{exc}"))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(20)
    assert box, "the request hung"
    if isinstance(box[0], AssertionError):
        raise box[0]
    return box[0]  # type: ignore[return-value]


@pytest.mark.parametrize("dialect", sorted(BODIES))
def test_fuzzed_tool_call_streams_end_in_a_result_or_our_error(
        dialect: str, server: ScriptServer, figures: Any) -> None:
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    seen = {"answered": 0, "refused": 0}
    RAN.clear()
    with _router(server, dialect) as r:

        @FUZZ
        @example(KNOWN_GOOD[dialect])  # a well-formed call: the run path is reached
        @given(split(BODIES[dialect]))
        def case(reads: list[bytes]) -> None:
            server.script(reads, content_type=ctype)
            out = _ask(r)
            assert r.metrics()["p"].in_flight == 0
            assert r.provider("p").endpoints[0].outstanding == 0
            if isinstance(out, Result):
                out.text.encode("utf-8")
                for call in out.tool_calls:
                    str(call).encode("utf-8")
                seen["answered"] += 1
            else:
                str(out).encode("utf-8")
                assert isinstance(out, RoutingError), type(out)
                seen["refused"] += 1

        case()
    part = figures.part("tool wire fuzzing", "fuzz cases", "tool runs")
    part.add("fuzz cases", sum(seen.values()))
    part.add("tool runs", len(RAN))
    assert seen["answered"], seen  # the generator reaches answers, not only refusals
    assert RAN, "no fuzzed stream ran a tool: the generator misses the path"
