"""The schema check (``structured.Schema``), pure: what a server may send never escapes
as anything but a one-line ``InvalidAnswer``, whatever the text (fuzzed) or the user's
validators do; names, strictness and the instruction are what servers need."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

from timmy_magic.model.chat import Message
from timmy_magic.model.prompting import retry_request, with_instruction
from timmy_magic.model.schema import InvalidAnswer, Schema


class Point(BaseModel):
    x: int
    y: int


class Picky(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def boom(cls, v: str) -> str:
        if v == "key":
            raise KeyError("a user's validator bug")
        return v


DICT = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
                                         "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["n"]}
SCHEMAS = [Schema.of(Point), Schema.of(Picky), Schema.of(DICT), Schema.of(list[Point]),
           Schema.of({"type": "array"})]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)
answers = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    json_values.map(lambda v: f"```json\n{json.dumps(v)}\n```"),
    st.integers(1, 30_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 30_000).map(lambda n: '{"a":' * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '{"x": NaN, "y": 1}', "", "   ",
                     '"\\ud800"', '{"name": "key"}', '{"x": 1, "y": 2}',
                     '[{"x": 1, "y": 2}]', '{"n": -1}', '{"n": 1, "tags": [1]}']))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers, st.sampled_from(range(len(SCHEMAS))))
def test_any_answer_is_data_or_one_invalid_line(text: str, which: int) -> None:
    schema = SCHEMAS[which]
    try:
        schema.validate(text)
    except InvalidAnswer as exc:
        msg = str(exc)
        assert msg.startswith("invalid JSON: ") and "\n" not in msg and len(msg) < 700


def test_what_each_check_says() -> None:
    p = Schema.of(Point)
    assert p.validate('{"x": 1, "y": "2"}') == Point(x=1, y=2)
    with pytest.raises(InvalidAnswer, match=r"^invalid JSON: y: Field required$"):
        p.validate('{"x": 1}')
    with pytest.raises(InvalidAnswer, match="not valid JSON: Expecting value"):
        p.validate("Sure! Here it is")
    with pytest.raises(InvalidAnswer, match="NaN is not a JSON number"):
        p.validate('{"x": NaN, "y": 1}')
    with pytest.raises(InvalidAnswer, match="nested too deeply"):
        Schema.of({"type": "array"}).validate("[" * 5000 + "]" * 5000)
    with pytest.raises(InvalidAnswer, match="checking it raised KeyError"):
        Schema.of(Picky).validate('{"name": "key"}')
    d = Schema.of(DICT)
    with pytest.raises(InvalidAnswer) as info:
        d.validate('{"n": -1, "tags": [1, 2, 3, 4]}')
    # the first three errors by path, then how many more
    assert str(info.value) == ("invalid JSON: n: -1 is less than the minimum of 0; "
                               "tags.0: 1 is not of type 'string'; tags.1: 2 is not of "
                               "type 'string' (and 2 more)")


def test_names_strictness_and_the_instruction() -> None:
    assert Schema.of(Point).name == "Point" and not Schema.of(Point).strict
    assert Schema.of({"title": "My schema!", "type": "object"}).name == "My_schema"
    assert Schema.of({"type": "object"}).name == "answer"
    closed = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "object", "additionalProperties": False,
                                   "properties": {"b": {"type": "string"}},
                                   "required": ["b"]}}}
    assert Schema.of(closed).strict
    open_inner = json.loads(json.dumps(closed))
    del open_inner["properties"]["a"]["additionalProperties"]
    assert not Schema.of(open_inner).strict
    told = Schema.of(Point).instruction()
    assert told.startswith("Answer with only a JSON value") and '"x"' in told
    msgs = with_instruction((Message("user", "hi"),), Schema.of(Point))
    assert [m.role for m in msgs] == ["system", "user"] and '"y"' in msgs[0].text
    msgs = with_instruction((Message("system", "Be brief."), Message("user", "hi")),
                            Schema.of(Point))
    assert msgs[0].text.startswith("Be brief.\n\nAnswer with only")
    again = retry_request(msgs, "x" * 10_000, "invalid JSON: y: Field required")
    assert again[-2].role == "assistant" and len(again[-2].text) == 4_001
    assert "y: Field required" in again[-1].text


def test_an_invalid_answer_quoting_a_secret_is_redacted() -> None:
    from timmy_magic.privacy.redact import REDACT

    canary = "canary-secret-9f8e7d6c5b4a3210"  # not key-shaped: only registration hides it
    REDACT.add([canary])
    with pytest.raises(InvalidAnswer) as info:
        Schema.of({"type": "object", "properties": {"n": {"type": "integer"}}}).validate(
            f'{{"n": "{canary}"}}')
    assert canary not in str(info.value)
    assert str(info.value).startswith("invalid JSON: n: ")


def test_a_schema_dict_nested_past_the_recursion_limit_is_one_line() -> None:
    from timmy_magic.model.errors import InvalidRequest

    deep: dict = {"type": "object"}
    node = deep
    for _ in range(5000):
        node["properties"] = {"a": {"type": "object"}}
        node = node["properties"]["a"]
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        Schema.of(deep)
