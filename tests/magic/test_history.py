"""Conversation memory: one turn per cell, re-running a cell replaces its turn."""

from __future__ import annotations

from timmy_magic.model.chat import Message
from timmy_magic.notebook.history import Conversation, Turn, source_key


def test_new_cells_append_and_see_every_earlier_turn() -> None:
    c = Conversation()
    assert c.context("a") == ()
    c.record(Turn("a", "q1", "a1"))
    c.record(Turn("b", "q2", "a2", "llama"))
    assert c.context("c") == (Message("user", "q1"), Message("assistant", "a1"),
                              Message("user", "q2"), Message("assistant", "a2"))


def test_rerunning_a_cell_replaces_its_turn_in_place_and_sees_only_earlier_turns() -> None:
    c = Conversation()
    for key in "abc":
        c.record(Turn(key, f"q{key}", f"a{key}"))
    assert c.context("b") == (Message("user", "qa"), Message("assistant", "aa"))
    c.record(Turn("b", "qb2", "ab2"))
    assert [t.prompt for t in c.turns] == ["qa", "qb2", "qc"]
    assert len(c) == 3


def test_reset_counts_and_forgets() -> None:
    c = Conversation()
    c.record(Turn("a", "q", "a"))
    assert c.reset() == 1 and len(c) == 0 and c.context("a") == ()


def test_source_key_is_stable_and_source_sensitive() -> None:
    assert source_key("--chat", "hi") == source_key("--chat", "hi")
    assert source_key("--chat", "hi") != source_key("--chat", "hi!")
    assert source_key("", "x").startswith("src:")


def test_reprs_show_turns_shortened() -> None:
    c = Conversation()
    assert "No conversation yet" in repr(c) and "%%llm --chat" in c._repr_markdown_()
    c.record(Turn("a", "word " * 40, "short", "llama-server"))
    assert "**llama-server:** short" in c._repr_markdown_()
    assert "…" in repr(c) and len(repr(c).splitlines()[0]) < 100
