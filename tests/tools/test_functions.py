"""A kernel function as a tool, without a server: its schema from the signature, the
model's arguments checked against it, and its result as the model gets it."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import date
from typing import Literal

import pytest
from pydantic import BaseModel

from timmy_magic.model.errors import InvalidRequest
from timmy_magic.tools import Tool, ToolArgumentsError, result_text


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: float
    y: float


def draw(points: list[Point], colour: Colour, mode: Literal["fill", "line"] = "line",
         label=None, *rest: int, width: int = 1, **kw: str) -> str:
    """Draw points.

    Longer text."""
    return "ok"


def test_the_schema_comes_from_the_signature():
    t = Tool.of(draw)
    assert t.name == "draw" and t.spec.description == "Draw points.\n\nLonger text."
    p = t.spec.parameters
    assert p["type"] == "object" and p["additionalProperties"] is False
    assert p["required"] == ["points", "colour"]
    props = p["properties"]
    assert set(props) == {"points", "colour", "mode", "label", "width"}  # no *rest, **kw
    assert props["points"] == {"type": "array", "items": {"$ref": "#/$defs/Point"}}
    assert props["colour"] == {"$ref": "#/$defs/Colour"}
    assert props["mode"] == {"enum": ["fill", "line"], "type": "string", "default": "line"}
    assert props["label"] == {"type": "string", "default": None}  # no hint: a string
    assert props["width"] == {"type": "integer", "default": 1}
    assert p["$defs"]["Colour"]["enum"] == ["red", "blue"]


def test_arguments_are_validated_into_what_the_function_takes():
    t = Tool.of(draw)
    args = t.validate('{"points": [{"x": 1, "y": 2}], "colour": "red"}')
    assert args == {"points": [Point(x=1, y=2)], "colour": Colour.RED, "mode": "line",
                    "label": None, "width": 1}
    with pytest.raises(ToolArgumentsError, match=r"^invalid arguments: points.0.y: Field "
                                                 r"required; colour: Input should be"):
        t.validate('{"points": [{"x": 1}], "colour": "green"}')
    with pytest.raises(ToolArgumentsError, match="extra: Extra inputs are not permitted"):
        t.validate('{"points": [], "colour": "red", "extra": 1}')
    with pytest.raises(ToolArgumentsError, match="must be a JSON object, not list"):
        t.validate("[1]")


def test_a_bound_method_is_a_tool_and_a_class_is_not():
    class Shop:
        def price(self, item: str) -> int:
            """A price."""
            return len(item)

    t = Tool.of(Shop().price)
    assert t.spec.parameters["required"] == ["item"] and t(t.validate('{"item": "tea"}')) == 3
    with pytest.raises(InvalidRequest, match="not type"):
        Tool.of(Shop)
    with pytest.raises(InvalidRequest, match="tool name '<lambda>' is not a valid function"):
        Tool.of(lambda: 1)

    async def fetch(url: str) -> str:
        return url

    with pytest.raises(InvalidRequest, match="tool fetch is an async function"):
        Tool.of(fetch)


@dataclass
class Row:
    day: date
    value: float


def test_results_are_json_where_pydantic_can_else_str_masked_and_cut(monkeypatch):
    assert result_text(Row(date(2026, 1, 2), 1.5)) == '{"day":"2026-01-02","value":1.5}'
    assert result_text({"a": [1, 2]}) == '{"a":[1,2]}'
    assert result_text("plain") == "plain"
    assert result_text(object()).startswith("<object object at")
    assert result_text(math.nan) == "NaN" or result_text(math.nan) == "null"
    secret = "ghp_" + "A1b2" * 9
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    assert secret not in result_text({"token": secret})
    long = result_text("x" * 10_000, limit=100)
    assert long.startswith("x" * 100) and long.endswith("… (cut: 10,000 characters)")
