"""Conversation memory for ``%%llm --chat``, one turn per cell.

A turn is keyed by the cell that produced it (its Jupyter cell id when the front end sends
one, else a hash of its source). Re-running a cell replaces its turn in place instead of
appending a duplicate, and the context it sends is the turns that came before its own:
the conversation reads like the notebook, whatever order the cells were run in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from timmy_magic.model.chat import Message
from timmy_magic.text.markup import md, plain, shorten

TURN_CHARS = 80
"""How much of a prompt or an answer a turn shows in the conversation's summary."""


@dataclass(frozen=True, slots=True)
class Turn:
    key: str
    prompt: str
    answer: str
    provider: str | None = None


def source_key(line: str, cell: str) -> str:
    """A cell key from its source, for front ends that send no cell id."""
    source = f"{line}\n{cell}".encode("utf-8", "surrogatepass")  # any str, even a lone surrogate
    return "src:" + hashlib.sha1(source).hexdigest()[:16]


class Conversation:
    def __init__(self) -> None:
        self._turns: list[Turn] = []

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def _index(self, key: str) -> int | None:
        return next((i for i, t in enumerate(self._turns) if t.key == key), None)

    def context(self, key: str) -> tuple[Message, ...]:
        """Messages that precede the turn of cell ``key`` (all turns for a new cell)."""
        i = self._index(key)
        earlier = self._turns if i is None else self._turns[:i]
        return tuple(m for t in earlier for m in (Message("user", t.prompt),
                                                   Message("assistant", t.answer)))

    def record(self, turn: Turn) -> None:
        """Add the turn, replacing the earlier turn of the same cell if there is one."""
        i = self._index(turn.key)
        if i is None:
            self._turns.append(turn)
        else:
            self._turns[i] = turn

    def reset(self) -> int:
        """Forget every turn; returns how many there were."""
        n = len(self._turns)
        self._turns.clear()
        return n

    def _repr_markdown_(self) -> str:
        if not self._turns:
            return "*No conversation yet: run a cell with `%%llm --chat`.*"
        # prompts, answers (one-line previews, so shown as text) and provider names are
        # not ours: escaped
        rows = [f"{i}. **you:** {md(shorten(t.prompt, TURN_CHARS))}  \n   "
                f"**{md(t.provider or 'assistant')}:** {md(shorten(t.answer, TURN_CHARS))}"
                for i, t in enumerate(self._turns, 1)]
        return "\n".join(rows)

    def __repr__(self) -> str:
        if not self._turns:
            return "No conversation yet: run a cell with %%llm --chat."
        return plain("\n".join(f"{i}. you: {shorten(t.prompt, TURN_CHARS)}\n   "
                                f"{t.provider or 'assistant'}: {shorten(t.answer, TURN_CHARS)}"
                                for i, t in enumerate(self._turns, 1)))
