"""The lean decoding path gives exactly what the line-by-line one gives: ``SSEReader`` (a
whole read at a time) the events of ``LineSplitter`` + ``SSEDecoder`` for any bytes cut
anywhere, with the same bounds; ``loads`` (msgspec where installed) the values and the
refusals of the stdlib's ``json.loads``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timmy_magic.providers import wire
from timmy_magic.providers.wire import LineSplitter, SSEDecoder, SSEReader, WireError, loads

PIECES = [b"data: x", b"data:y", b"data", b"event: e", b"id: 1", b": c", b"\r\n", b"\n",
          b"\r", b"", b"\xf0\x9f\x98\x80", b"\xff", b'{"a": 1}', b"[DONE]"]


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _line_by_line(reads: list[bytes]) -> list[tuple[str, str]]:
    lines, decoder, out = LineSplitter(), SSEDecoder(), []
    for data in reads:
        out += [ev for line in lines.feed(data) if (ev := decoder.line(line)) is not None]
    out += [ev for line in lines.close() if (ev := decoder.line(line)) is not None]
    return out + ([last] if (last := decoder.close()) is not None else [])


def _lean(reads: list[bytes]) -> list[tuple[str, str]]:
    reader, out = SSEReader(), []
    for data in reads:
        out += reader.feed(data)
    return out + reader.end()


@given(st.lists(st.sampled_from(PIECES), max_size=50).map(b"".join) | st.binary(max_size=200),
       st.lists(st.integers(0, 400), max_size=8))
@settings(max_examples=500, deadline=None, derandomize=True)
def test_sse_reader_gives_the_events_of_the_line_by_line_decoder(
        data: bytes, cuts: list[int]) -> None:
    expected = _line_by_line([data])
    assert _lean(_cut(data, cuts)) == expected
    assert _line_by_line(_cut(data, cuts)) == expected


def test_sse_reader_is_bounded_as_the_line_by_line_decoder() -> None:
    reader = SSEReader(max_line=1000)
    reader.feed(b"data: " + b"x" * 500)
    with pytest.raises(WireError, match="longer than 1000 bytes"):
        reader.feed(b"x" * 600)
    with pytest.raises(WireError, match="longer than 1000 bytes"):
        SSEReader(max_line=1000).feed(b"data: " + b"x" * 1200 + b"\n\n")
    reader = SSEReader(max_event=1000)
    with pytest.raises(WireError, match="larger than 1000"):
        reader.feed(b"data: " + b"y" * 100 + b"\n" * 1)
        for _ in range(20):
            reader.feed(b"data: " + b"y" * 100 + b"\n")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(), lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=10)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(json_values)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_loads_decodes_what_the_stdlib_decodes(value: Any) -> None:
    text = json.dumps(value)
    assert _same(loads(text), json.loads(text))


@pytest.mark.parametrize("text", ['"\\ud83d"', '"\\ude00 alone"', "[NaN]", "[1e400]",
                                  "[18446744073709551616]", '{"a": 1, "a": 2}'])
def test_what_msgspec_refuses_or_reads_differently_the_stdlib_decides(text: str) -> None:
    assert _same(loads(text), json.loads(text))


@pytest.mark.parametrize("text", ["", "{", '"a\x01b"', "[1] x", "{'a': 1}", "[" * 100_000])
def test_what_is_not_json_is_a_wire_error(text: str) -> None:
    with pytest.raises(WireError, match="not JSON"):
        loads(text)


def test_the_fast_parser_is_used_when_installed() -> None:
    pytest.importorskip("msgspec")
    loads("{}")
    assert wire._FAST
