"""The owners of the small guarantees (one each, see test_layout): what they return is
what every feature shows, so it is pinned here once."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError

from timmy_magic.model.chat import ChatRequest
from timmy_magic.model.tokens import CHARS_PER_TOKEN, estimate_tokens, image_tokens
from timmy_magic.notebook.args import HelpShown, UsageParser
from timmy_magic.notebook.display.render import rich_frontend
from timmy_magic.text.markup import count, fence, md_code, short_count, shorten


def test_shorten_keeps_text_at_the_limit_and_cuts_one_over() -> None:
    assert shorten("abcde", 5) == "abcde"
    assert shorten("abcdef", 5) == "abcd…"
    assert all(len(shorten("x" * n, 80)) == min(n, 80) for n in range(200))


def test_shorten_makes_one_line_before_it_measures() -> None:
    assert shorten("  a\n  b\tc\r\n", 10) == "a b c"
    assert shorten("one\n\ntwo three", 8) == "one two…"
    # a word is never cut in half where a space is near the end; a long token is cut inside
    note = "nothing listening at http://127.0.0.1:9: start it or set enabled: false"
    assert shorten(note, 58) == "nothing listening at http://127.0.0.1:9: start it or set…"
    assert shorten(note, 56) == "nothing listening at http://127.0.0.1:9: start it or…"
    assert shorten("see https://example.invalid/a/very/long/path/without/spaces", 30) \
        == "see https://example.invalid/a…"
    assert all(note.startswith(shorten(note, n)[:-1]) and len(shorten(note, n)) <= n
               for n in range(1, len(note)))


def test_a_code_block_of_data_is_never_highlighted_as_markdown() -> None:
    assert md_code("In[10]: x", "markdown").startswith("```text\n")
    assert md_code("In[10]: x", "MD").startswith("```text\n")
    assert md_code('{"a": 1}', "json").startswith("```json\n")
    assert 'class="language-text"' in md_code("costs $5 in In[10]", "markdown")


def test_short_count() -> None:
    shown = [short_count(n) for n in (0, 850, 999, 1000, 1234, 4000, 4096, 5120, 9999,
                                      12_345, 131_072)]
    assert shown == ["0", "850", "999", "1k", "1.2k", "4k", "4.1k", "5.1k", "10k", "12k",
                     "131k"]


def test_count_pluralises_and_separates_thousands() -> None:
    assert (count(0, "provider"), count(1, "provider"), count(2, "turn")) == \
        ("0 providers", "1 provider", "2 turns")
    assert count(2, "library frame") == "2 library frames"
    assert count(1234, "row") == "1,234 rows"
    assert count(3, "entry", "entries") == "3 entries"


def test_fence_is_longer_than_any_backtick_run_inside() -> None:
    assert fence("x = 1\n", "python") == "```python\nx = 1\n```"
    text = "a ``` b\n````\nc"
    out = fence(text)
    assert out == f"`````text\n{text}\n`````"
    body = out.split("\n")[1:-1]
    assert not any(line.strip().startswith("`````") for line in body)  # nothing closes it
    assert fence("x", "py`\nthon") == "```python\nx\n```"  # the info string stays one word


def test_md_code_is_the_fence_of_the_cleaned_text() -> None:
    assert md_code("a ```` b", "text") == fence("a ```` b", "text") == "`````text\na ```` b\n`````"
    assert md_code("x\x00y\n") == fence("x\ufffdy")


def test_tokens_are_estimated_at_four_characters() -> None:
    assert CHARS_PER_TOKEN == 4
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    req = ChatRequest.of("de", system="abc")
    assert req.input_tokens == estimate_tokens("abcde") == 2
    assert image_tokens(300, 250) == 100 and image_tokens(None, None) == 1000
    assert image_tokens(10_000, 10_000) == 1600


class _Rich(DisplayPublisher):
    """A publisher of a front end that collects outputs (a kernel's, capture_output's)."""


@pytest.mark.parametrize(("shell", "mode", "rich"), [
    (None, "auto", False),  # plain Python
    (SimpleNamespace(display_pub=DisplayPublisher()), "auto", False),  # terminal IPython
    (SimpleNamespace(display_pub=_Rich()), "auto", True),
    (SimpleNamespace(display_pub=_Rich()), "terminal", False),
    (None, "rich", True),
])
def test_rich_frontend_asks_the_shell_unless_the_user_chose(shell: object, mode: str,
                                                            rich: bool) -> None:
    assert rich_frontend(shell, mode) is rich


def test_usage_parser_raises_one_line_with_the_usage() -> None:
    p = UsageParser(prog="%llm pin", add_help=True)
    p.add_argument("name", metavar="NAME")
    with pytest.raises(UsageError) as info:
        p.parse_args(["a", "b"])
    assert str(info.value) == "%llm pin: unrecognized arguments: b (usage: %llm pin NAME)"
    with pytest.raises(HelpShown):
        p.parse_args(["--help"])
    assert isinstance(p, argparse.ArgumentParser)
