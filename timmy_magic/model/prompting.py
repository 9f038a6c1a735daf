"""The messages a schema adds to a request: its instruction in the system prompt, and
the second try after an invalid answer (what was wrong, fed back)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timmy_magic.model.chat import Message
from timmy_magic.model.schema import RETRY_ANSWER_CHARS, Schema


def retry_request(messages: Sequence[Any], text: str, error: str) -> tuple[Any, ...]:
    """The messages of a second try: the first, the invalid answer, and what was wrong."""
    shown = text if len(text) <= RETRY_ANSWER_CHARS else text[:RETRY_ANSWER_CHARS] + "…"
    return (*messages, Message("assistant", shown or "(empty)"),
            Message("user", f"That answer is not valid: {error}. Answer again with only "
                            "the corrected JSON."))


def with_instruction(messages: Sequence[Any], schema: Schema) -> tuple[Any, ...]:
    """The messages with the schema's instruction at the end of the system prompt (a new
    system message first when there is none)."""
    told = schema.instruction()
    out = list(messages)
    for i, m in enumerate(out):
        if m.role == "system":
            out[i] = Message("system", f"{m.text}\n\n{told}")
            return tuple(out)
    return (Message("system", told), *out)
