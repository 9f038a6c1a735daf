"""How a user message carries notebook context: an intro line, the context blocks, then
the user's request under its heading; and that request read back out of such a message.

One owner for both directions: ``context`` builds the message (``with_context``), the
answer cache summarises a recorded prompt by the request alone (``request_of``), so the
two never disagree on where the request begins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from timmy_magic.privacy.masking import MASK

INTRO = ("Context from the user's Jupyter notebook kernel follows (secrets are masked "
         f"as {MASK}).")
REQUEST_HEADING = "### Request\n"
"""The user's request follows this, after ``INTRO`` and the context blocks."""
_BETWEEN = "\n\n"


def with_context(blocks: Sequence[str], request: str) -> str:
    """The user message: ``INTRO``, each context block, then the request under its
    heading, separated by blank lines."""
    return _BETWEEN.join([INTRO, *blocks, REQUEST_HEADING + request])


def request_of(text: str) -> str:
    """The user's request in a message ``with_context`` made; any other text as it is."""
    heading = _BETWEEN + REQUEST_HEADING
    if text.startswith(INTRO) and heading in text:
        return text.rpartition(heading)[2]
    return text


_ASKS = re.compile(
    r"(please\s+)?(summari[sz]e|explain|write|list|describe|translate|tell|give|show|fix|"
    r"rewrite|create|generate|make|find|compare|suggest|convert|classify|answer|what|why|how|"
    r"when|where|which|who|can you|could you|would you)\b", re.IGNORECASE)


def reads_as_instruction(text: str) -> bool:
    """The request (after any notebook context) is a question or an instruction: a base
    model (``mode: completion``) continues such text rather than answering it."""
    req = request_of(text).strip()
    return bool(req) and (req.endswith("?") or _ASKS.match(req) is not None
                          or text.startswith(INTRO))
