"""Escape-safe {name} interpolation: references only, braces in code/JSON untouched."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timmy_magic.model.template import InterpolationError, interpolate, references

NS = {"topic": "JSON", "n": 3, "rows": [{"name": "a"}, {"name": "b"}],
      "cfg": {"model": "gemma", "k-1": 7}, "obj": SimpleNamespace(shape=(10, 2)),
      "_private": "p", "ünï": "u"}


@pytest.mark.parametrize("template, expected", [
    ("Explain {topic}.", "Explain JSON."),
    ("{n}{n}", "33"),
    ("{obj.shape[0]} rows", "10 rows"),
    ("{rows[-1]['name']} / {rows[0][\"name\"]}", "b / a"),
    ("{cfg['k-1']}", "7"),
    ("{_private} {ünï}", "p u"),
    ("{{topic}}", "{topic}"),
    ("{{{topic}}}", "{JSON}"),
    ("{{x}} and {{{{y}}}}", "{x} and {{y}}"),
    ("}} {{", "}} {"),               # a }} that closes no {{ stays as written
])
def test_references_are_replaced_and_escapes_unescaped(template: str, expected: str) -> None:
    assert interpolate(template, NS) == expected


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1, 2]}',                      # JSON
    '{"a": {"b": {"c": 1}}}',                     # nested JSON: its }} are not escapes
    "def f():\n    return {x: 1 for x in y}\n",  # a dict comprehension
    "if (a) { return; }",                          # C-like block
    "{ topic }", "{topic:.2f}", "{topic!r}", "{}", "{1}", "{topic.}", "{rows[name]}",
    "lone } and { braces", "{", "}", "}{",
])
def test_anything_that_is_not_a_reference_is_left_alone(text: str) -> None:
    assert interpolate(text, {}) == text


def test_code_with_braces_and_a_reference_mix() -> None:
    template = 'Fix for {topic}:\n```js\nconst o = {"k": [1, {}]};\nif (x) { y(); }\n```'
    assert interpolate(template, NS) == template.replace("{topic}", "JSON")


def test_undefined_name_is_a_clear_error_naming_it() -> None:
    with pytest.raises(InterpolationError, match=r"\{missing\}: name 'missing' is not "
                                                 r"defined \(write \{\{ and \}\}"):
        interpolate("About {missing} things", NS)


@pytest.mark.parametrize("template, fragment", [
    ("{obj.nope}", "no attribute 'nope'"),
    ("{rows[5]}", "IndexError"),
    ("{cfg['absent']}", "KeyError"),
    ("{n[0]}", "TypeError"),
])
def test_failing_lookups_name_the_reference(template: str, fragment: str) -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate(template, NS)
    assert template in str(info.value) and fragment in str(info.value)


def test_a_property_that_raises_becomes_an_interpolation_error() -> None:
    class Boom:
        @property
        def value(self) -> int:
            raise RuntimeError("nope")

    with pytest.raises(InterpolationError, match="RuntimeError: nope"):
        interpolate("{b.value}", {"b": Boom()})


def test_references_lists_lookups_in_order_skipping_escapes() -> None:
    assert references("{a} {{b}} {c.d[0]} {e f}") == ["a", "c.d[0]"]


@given(st.text(alphabet=st.sampled_from(list('{}ab_.[]0\'" :\n')), max_size=40))
def test_never_crashes_on_arbitrary_brace_soup(text: str) -> None:
    ns = {"a": 1, "b": [1], "ab": {"k": 2}, "_": "u"}
    try:
        out = interpolate(text, ns)
    except InterpolationError:
        return
    assert isinstance(out, str)


_TEXT = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=5)


@given(st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(_TEXT, kids, max_size=3), max_leaves=8))
def test_json_documents_pass_through_unchanged(doc: object) -> None:
    text = json.dumps(doc)
    assert interpolate(text, {}) == text


@pytest.mark.parametrize("text", [
    "${HOME}", "echo ${PATH:-/bin}", r"\frac{a}{b}", r"\mathbf{x} + \sqrt{n}", "x^{n}",
    "a_{ij}", r"\begin{align}", "}{topic}", r"$\frac{topic}{n}$",
])
def test_latex_and_shell_braces_are_text_even_when_the_name_exists(text: str) -> None:
    # "topic" and "n" are defined: a reference here would be replaced, so this fails if
    # LaTeX or shell syntax is read as a reference.
    assert interpolate(text, NS) == text
    assert references(text) == []


def test_references_side_by_side_and_after_latex_still_resolve() -> None:
    assert interpolate("{n}{topic}", NS) == "3JSON"
    assert interpolate(r"$x^{n}$ for {topic}", NS) == r"$x^{n}$ for JSON"


def test_str_that_raises_is_an_interpolation_error_naming_the_reference() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no text for you")

    with pytest.raises(InterpolationError) as info:
        interpolate("show {u}", {"u": Unprintable()})
    message = str(info.value)
    assert "{u}" in message and "Unprintable" in message and "no text for you" in message
