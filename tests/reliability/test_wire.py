"""What a hostile server sends, by class (issue 11, "The wire").

Part 1 fuzzes the pure decoder (``providers/wire.py``) with every byte split. Part 2 sends
hypothesis-generated SSE and NDJSON bodies (any JSON value in any field, bytes split at
random across reads, mixed line endings, surrogates, huge lines) through each adapter and
the router against a real loopback server, and checks the invariants: the only exceptions
that escape are the project's own, ``in_flight`` returns to 0, what comes back is clean
text and sane numbers. Part 3 pins each reproduced fault.
"""

from __future__ import annotations

import json
import math
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timmy_magic.config import parse_config
from timmy_magic.model.chat import Result
from timmy_magic.model.errors import RoutingError, TimmyError
from timmy_magic.providers.wire import (
    LineSplitter,
    SSEDecoder,
    TextJoiner,
    WireError,
    content_text,
    model_name,
    token_count,
)
from timmy_magic.routing import attempt as attempt_mod
from timmy_magic.routing.router import Router

from ..support.scriptserver import ScriptServer, sse
from .conftest import Figures

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=3),
    max_leaves=8)
surrogate_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x1F64F), max_size=30)


# ---------------------------------------------------------------- part 1: the decoder


def _feed_all(data: bytes, cuts: list[int]) -> list[str]:
    s = LineSplitter()
    out: list[str] = []
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        out += s.feed(data[prev:cut])
        prev = cut
    return out + s.close()


@given(st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"data: x", b"\r\n", b"\n", b"\r", b"", b"\xf0\x9f\x98\x80", b"\xff", b":c"]),
    max_size=40).map(b"".join), st.lists(st.integers(0, 400), max_size=8))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_lines_do_not_depend_on_how_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    assert _feed_all(data, cuts) == _feed_all(data, [])
    assert _feed_all(data, []) == [ln.decode("utf-8", "replace")
                                   for ln in data.splitlines()]


def test_a_line_without_end_is_bounded() -> None:
    s = LineSplitter(max_line=1000)
    s.feed(b"x" * 600)
    with pytest.raises(WireError, match="longer than 1000 bytes"):
        s.feed(b"x" * 600)
    d = SSEDecoder(max_event=1000)
    with pytest.raises(WireError, match="larger than 1000"):
        for _ in range(20):
            d.line("data: " + "y" * 100)


@given(st.lists(st.text(max_size=40), max_size=30))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_sse_decoder_takes_any_lines(lines: list[str]) -> None:
    d = SSEDecoder()
    for ln in lines:
        ev = d.line(ln)
        assert ev is None or (isinstance(ev[0], str) and isinstance(ev[1], str))


@given(st.text(max_size=40), st.lists(st.integers(0, 100), max_size=6))
@settings(max_examples=400, deadline=None, derandomize=True)
def test_surrogate_pairs_split_anywhere_are_joined(text: str, cuts: list[int]) -> None:
    # the same text as UTF-16 code units: astral characters become surrogate pairs
    raw = text.encode("utf-16-le")
    units = "".join(chr(int.from_bytes(raw[i:i + 2], "little")) for i in range(0, len(raw), 2))
    j = TextJoiner()
    out, prev = [], 0
    for cut in sorted(c % (len(units) + 1) for c in cuts) + [len(units)]:
        out.append(j.push(units[prev:cut]))
        prev = cut
    out.append(j.flush())
    assert "".join(out) == text


@given(st.lists(surrogate_text, max_size=6))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_joined_text_is_always_encodable(pieces: list[str]) -> None:
    j = TextJoiner()
    text = "".join(j.push(p) for p in pieces) + j.flush()
    text.encode("utf-8")  # a lone surrogate would raise here


@given(json_values)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_server_values_are_checked_or_refused(value: object) -> None:
    n = token_count(value)
    assert n is None or (type(n) is int and 0 <= n < 2**53)
    m = model_name(value)
    assert m is None or (isinstance(m, str) and 0 < len(m) <= 256 and "\n" not in m)
    try:
        assert isinstance(content_text(value), str)
    except WireError:
        pass


# ---------------------------------------------------------------- part 2: through adapters

DIALECTS = ("openai_compatible", "anthropic", "ollama")


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _router(srv: ScriptServer, type_: str, extra: str = "") -> Router:
    key = ", api_key: sk-canary-0123456789abcdef" if type_ == "anthropic" else ""
    return Router(parse_config(
        "cascade: {max_retries_per_provider: 0, timeout_seconds: 5, idle_timeout_seconds: 3,"
        " first_token_timeout_seconds: 3, circuit_breaker: {failure_threshold: 100000}}\n"
        f"providers:\n  - {{name: p, type: {type_}, base_url: '{srv.url}'{key},"
        f" models: [{{name: m}}]{extra}}}\n", source="t.yaml", env={}))


@pytest.fixture(scope="module")
def routers(server: ScriptServer) -> Iterator[dict[str, Router]]:
    rs = {t: _router(server, t) for t in DIALECTS}
    yield rs
    for r in rs.values():
        r.close()


def _openai_event(draw: st.DrawFn) -> object:
    content = draw(st.one_of(st.text(max_size=12), surrogate_text, json_values,
                             st.lists(st.fixed_dictionaries(
                                 {"type": st.just("text"), "text": surrogate_text}),
                                 max_size=2)))
    obj: dict[str, object] = {"model": draw(st.one_of(st.just("m"), json_values)),
                              "choices": [{"delta": {"content": content},
                                           "finish_reason": draw(st.none() | st.just("stop"))}]}
    if draw(st.booleans()):
        obj["usage"] = {"prompt_tokens": draw(json_values),
                        "completion_tokens": draw(json_values)}
    return draw(st.one_of(st.just(obj), json_values)) if draw(st.integers(0, 9)) == 0 else obj


def _anthropic_events(draw: st.DrawFn) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("message_start", {"type": "message_start", "message": {
        "model": draw(json_values), "usage": {"input_tokens": draw(json_values)}}})]
    for _ in range(draw(st.integers(0, 4))):
        out.append(("content_block_delta", {"type": "content_block_delta", "delta": {
            "type": "text_delta", "text": draw(st.one_of(surrogate_text, json_values))}}))
    out.append(("message_delta", {"type": "message_delta",
                                  "usage": {"output_tokens": draw(json_values)}}))
    if draw(st.booleans()):
        out.append(("message_stop", {"type": "message_stop"}))
    return out


def _ollama_lines(draw: st.DrawFn) -> list[object]:
    out: list[object] = []
    for _ in range(draw(st.integers(0, 4))):
        out.append({"model": draw(json_values),
                    "message": {"role": "assistant",
                                "content": draw(st.one_of(surrogate_text, json_values))},
                    "done": False})
    if draw(st.booleans()):
        out.append({"done": True, "prompt_eval_count": draw(json_values),
                    "eval_count": draw(json_values)})
    return out


@st.composite
def bodies(draw: st.DrawFn, dialect: str) -> list[bytes]:
    """A whole response body for ``dialect``, split into reads at random places."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    if dialect == "ollama":
        lines = [json.dumps(o).encode() for o in _ollama_lines(draw)]
        body = b"".join(ln + eol for ln in lines)
    else:
        if dialect == "anthropic":
            frames = [b"event: " + e.encode() + eol + b"data: " + json.dumps(o).encode()
                      for e, o in _anthropic_events(draw)]
        else:
            frames = [b"data: " + json.dumps(_openai_event(draw)).encode()
                      for _ in range(draw(st.integers(0, 5)))]
            if draw(st.booleans()):
                frames.append(b"data: [DONE]")
        body = b"".join(f + eol + eol for f in frames)
    if draw(st.integers(0, 7)) == 0:
        body += draw(st.binary(max_size=40))  # garbage at the end
    cuts = sorted(set(draw(st.lists(st.integers(0, max(0, len(body))), max_size=6))))
    reads, prev = [], 0
    for c in cuts + [len(body)]:
        if c > prev:
            reads.append(body[prev:c])
        prev = c
    return reads


def _ask(r: Router) -> Result | TimmyError:
    """One request on a bounded thread: the result or our own error; anything else (or a
    hang) fails the test."""
    box: list[object] = []

    def go() -> None:
        try:
            box.append(r.complete("hi", max_tokens=8))
        except TimmyError as exc:
            box.append(exc)
        except BaseException as exc:
            box.append(AssertionError(f"foreign exception escaped: {type(exc).__name__}: {exc}"))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(15)
    assert box, "the request hung"
    if isinstance(box[0], AssertionError):
        raise box[0]
    return box[0]  # type: ignore[return-value]


def _check(r: Router, out: Result | TimmyError) -> None:
    m = r.metrics()["p"]
    assert m.in_flight == 0, f"in_flight stuck at {m.in_flight}"
    assert r.provider("p").endpoints[0].outstanding == 0
    assert math.isfinite(r.ledger.spent_today) and r.ledger.spent_today >= 0
    if isinstance(out, Result):
        out.text.encode("utf-8")
        assert out.model is None or isinstance(out.model, str)
        for n in (out.usage.input_tokens, out.usage.output_tokens):
            assert n is None or (type(n) is int and n >= 0)
        assert out.cost_usd >= 0 and math.isfinite(out.cost_usd)
        out.footer().encode("utf-8")
    else:
        str(out).encode("utf-8")
        assert isinstance(out, RoutingError)


FUZZED: dict[str, int] = {}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fuzzed_streams_through_each_adapter(dialect: str, server: ScriptServer,
                                             routers: dict[str, Router],
                                             figures: Figures) -> None:
    r = routers[dialect]
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    seen = {"answered": 0, "refused": 0}

    @FUZZ
    @given(bodies(dialect))
    def case(reads: list[bytes]) -> None:
        server.script(reads, content_type=ctype)
        out = _ask(r)
        _check(r, out)
        seen["answered" if isinstance(out, Result) else "refused"] += 1

    case()
    FUZZED[dialect] = sum(seen.values())
    figures.part("wire fuzzing", "fuzz cases").add("fuzz cases", sum(seen.values()))
    assert seen["answered"] and seen["refused"], seen  # the generator reaches both sides


# ---------------------------------------------------------------- part 3: reproduced faults


def _one(server: ScriptServer, r: Router, reads: list[bytes], **kw: object) -> Result | TimmyError:
    server.script(reads, **kw)  # type: ignore[arg-type]
    out = _ask(r)
    _check(r, out)
    return out


def _chunk(content: object, **extra: object) -> bytes:
    return sse({"model": "m", "choices": [{"delta": {"content": content}}], **extra})


STOP = sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"


def test_content_parts_are_joined_and_other_shapes_fail_before_the_first_token(
        server: ScriptServer, routers: dict[str, Router]) -> None:
    r = routers["openai_compatible"]
    out = _one(server, r, [_chunk([{"type": "text", "text": "Hel"}, {"type": "text",
                                                                   "text": "lo"}]), STOP])
    assert isinstance(out, Result) and out.text == "Hello"
    for bad in (7, {"x": 1}, [1, 2]):
        out = _one(server, r, [_chunk(bad), STOP])
        assert isinstance(out, RoutingError) and "content" in str(out)


@pytest.mark.parametrize("usage", [b'"12"', b"NaN", b"1e999", b"-10000000", b"1.5", b"true",
                                   b"[1]"])
def test_bad_usage_is_estimated_never_poisoned(server: ScriptServer,
                                               routers: dict[str, Router],
                                               usage: bytes) -> None:
    r = routers["openai_compatible"]
    tail = (b'data: {"choices": [], "usage": {"prompt_tokens": ' + usage
            + b', "completion_tokens": ' + usage + b"}}\n\n")
    out = _one(server, r, [_chunk("four words of text"), tail, b"data: [DONE]\n\n"])
    assert isinstance(out, Result) and out.ok
    assert out.usage.estimated and out.usage.output_tokens is not None \
        and out.usage.output_tokens >= 1
    assert "~" in out.footer() and "-" not in out.footer().split("tok")[0].split("·")[-1]


def test_a_nan_from_a_free_server_cannot_open_the_budget(server: ScriptServer) -> None:
    """The reproduced case: NaN usage made `spent` NaN, and 5 of 5 paid calls went through
    a $0.01 budget. Now the paid provider's spend is counted and the gate closes."""
    yaml = (
        "cascade: {max_retries_per_provider: 0}\n"
        "metabolic: {daily_budget_usd: 0.01}\n"
        "providers:\n"
        f"  - {{name: free, type: openai_compatible, priority: 1, base_url: '{server.url}',"
        "     models: [{name: m}]}\n"
        f"  - {{name: paid, type: openai_compatible, cloud: true, priority: 2,"
        f"     base_url: '{server.url}', models: [{{name: m, price_per_1k_output: 10.0,"
        "     price_per_1k_input: 10.0}]}\n")
    nan_usage = b'data: {"choices": [], "usage": {"prompt_tokens": NaN, "completion_tokens": NaN}}\n\n'
    with Router(parse_config(yaml, source="t.yaml", env={})) as r:
        server.script([_chunk("free words"), nan_usage, b"data: [DONE]\n\n"])
        assert r.complete("hi").provider == "free"
        assert math.isfinite(r.ledger.spent_today)
        paid = 0
        for _ in range(5):
            try:
                res = r.complete("hi", provider="paid")
                paid += res.provider == "paid"
            except RoutingError as exc:
                assert "budget" in str(exc)
        assert paid == 1 and r.ledger.spent_today > 0.01


def test_surrogates_from_the_wire_are_joined_or_replaced(server: ScriptServer,
                                                        routers: dict[str, Router]) -> None:
    r = routers["openai_compatible"]
    split = [b'data: {"choices": [{"delta": {"content": "A\\ud83d"}}]}\n\n',
             b'data: {"choices": [{"delta": {"content": "\\ude00B"}}]}\n\n', STOP]
    out = _one(server, r, split)
    assert isinstance(out, Result) and out.text == "A\U0001F600B"
    lone = [b'data: {"choices": [{"delta": {"content": "x\\ud800y"}}]}\n\n', STOP]
    out = _one(server, r, lone)
    assert isinstance(out, Result) and out.text == "x\ufffdy"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_bytes_without_a_newline_are_bounded(server: ScriptServer,
                                             routers: dict[str, Router],
                                             dialect: str) -> None:
    """Reproduced: RSS grew 38 -> 1757 MB in 8 s. Now the line bound stops it, fast."""
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    tracemalloc.start()
    try:
        out = _one(server, routers[dialect], [b"data: "], content_type=ctype,
                   endless=b"x" * 65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(out, RoutingError) and "longer than" in str(out)
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_an_endless_answer_stops_at_the_bound_and_keeps_the_text(
        server: ScriptServer, routers: dict[str, Router],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempt_mod, "MAX_ANSWER_CHARS", 20_000)
    out = _one(server, routers["openai_compatible"], [_chunk("start ")],
               endless=_chunk("y" * 1000))
    assert isinstance(out, Result) and not out.ok and "20000 characters" in (out.error or "")
    assert out.text.startswith("start ") and 19_000 < len(out.text) <= 20_000


@pytest.mark.parametrize("dialect,reads,note", [
    ("openai_compatible", [sse({"choices": [{"delta": {"reasoning_content": "hmm " * 10}}]}),
                           STOP], "reasoning (40 characters"),
    ("openai_compatible", [sse({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "function": {"name": "f"}}]}}]}), STOP], "1 tool call"),
    ("anthropic", [sse({"type": "message_start", "message": {"model": "m"}}),
                   sse({"type": "content_block_delta",
                        "delta": {"type": "thinking_delta", "thinking": "abc"}}),
                   sse({"type": "message_delta", "usage": {"output_tokens": 3}}),
                   sse({"type": "message_stop"})], "reasoning (3 characters"),
    ("ollama", [json.dumps({"message": {"thinking": "ab"}, "done": False}).encode() + b"\n",
                json.dumps({"done": True, "eval_count": 2}).encode() + b"\n"],
     "reasoning (2 characters"),
])
def test_answers_without_text_say_what_they_held(server: ScriptServer,
                                                 routers: dict[str, Router], dialect: str,
                                                 reads: list[bytes], note: str) -> None:
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    out = _one(server, routers[dialect], reads, content_type=ctype)
    assert isinstance(out, Result) and out.text == ""
    assert any(note in n for n in out.notes), out.notes


def test_a_dict_model_and_negative_usage_are_not_shown(server: ScriptServer,
                                                      routers: dict[str, Router]) -> None:
    r = routers["openai_compatible"]
    reads = [sse({"model": {"evil": 1}, "choices": [{"delta": {"content": "hi"}}]}),
             sse({"choices": [], "usage": {"prompt_tokens": -5,
                                           "completion_tokens": -10000000}}), STOP]
    out = _one(server, r, reads)
    assert isinstance(out, Result) and out.model == "m"
    assert "-10000000" not in out.footer() and out.usage.output_tokens == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_key_echoed_in_an_in_stream_error_is_masked(server: ScriptServer,
                                                     dialect: str) -> None:
    key = "sk-canary-0123456789abcdef"
    r = _router(server, dialect, extra=f", api_key: {key}" if dialect != "anthropic" else "")
    echo = f"bad key Bearer {key} for you"
    reads = ([json.dumps({"error": echo}).encode() + b"\n"] if dialect == "ollama" else
             [sse({"type": "error", "error": {"message": echo}}, event="error")])
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    with r:
        out = _one(server, r, reads, content_type=ctype)
    assert isinstance(out, RoutingError) and "bad key" in str(out)
    for text in (str(out), repr(out), str(out.trace), *(a.error or "" for a in out.trace.attempts)):
        assert key not in text


def _answer_a(dialect: str) -> tuple[list[bytes], str]:
    """A whole answer "a" in ``dialect``, and its content type."""
    ctype = "application/x-ndjson" if dialect == "ollama" else "text/event-stream"
    return {
        "openai_compatible": [_chunk("a"), STOP],
        "anthropic": [sse({"type": "message_start", "message": {"model": "m"}}),
                      sse({"type": "content_block_delta",
                           "delta": {"type": "text_delta", "text": "a"}}),
                      sse({"type": "message_stop"})],
        "ollama": [json.dumps({"message": {"content": "a"}, "done": True}).encode() + b"\n"],
    }[dialect], ctype


@pytest.mark.parametrize("dialect", DIALECTS)
def test_connections_are_reused(server: ScriptServer, dialect: str) -> None:
    """Each body is read to its end (past [DONE]), so httpx keeps the connection."""
    reads, ctype = _answer_a(dialect)
    with _router(server, dialect) as r:
        server.script(reads, content_type=ctype)
        r.complete("warm up")
        before = server.connections
        for _ in range(10):
            assert r.complete("hi").text == "a"
        assert server.connections - before == 0


@pytest.mark.parametrize("type_", DIALECTS)
def test_a_kept_alive_connection_the_server_closed_is_sent_again_on_a_fresh_one(
        type_: str) -> None:
    """A server that hangs up on the second request of a kept-alive connection (as one
    that closed an idle connection looks to the client): every answer still arrives, the
    dropped request went out again on a new connection, and no failure is counted."""
    with ScriptServer() as srv:
        srv.drop_reused = True
        srv.script(*_answer_a(type_))
        r = _router(srv, type_)
        try:
            texts = [r.complete("hi").text for _ in range(4)]
            snap = r.metrics()["p"]
        finally:
            r.close()
    assert texts == ["a"] * 4
    assert srv.dropped >= 1 and srv.connections == 1 + srv.dropped, (srv.dropped,
                                                                     srv.connections)
    assert snap.failures == 0 and snap.successes == 4
