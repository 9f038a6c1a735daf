"""Pure post-processing of an answer for ``%%llm -f code|json|html``.

Models wrap code, JSON and HTML in Markdown fences more often than not; these helpers take
the first fenced block when there is one (an unclosed fence, as left by ``--max-tokens``,
runs to the end) and the whole answer otherwise.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Format = Literal["markdown", "text", "code", "json", "html"]
FORMATS: tuple[str, ...] = get_args(Format)

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.#-]*)[^\n]*\n", re.MULTILINE)


def fenced_block(text: str, lang: str | None = None) -> str | None:
    """Body of the first fenced block (of language ``lang`` if given, else any), or None."""
    for m in _FENCE.finditer(text):
        if lang is not None and m.group(2).lower() != lang:
            continue
        fence = m.group(1)
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$",
                           re.MULTILINE)
        end = close.search(text, m.end())
        return text[m.end(): end.start() if end else len(text)].rstrip("\n")
    return None


def extract_code(text: str) -> str:
    """The answer's first code block, else the whole answer (stripped)."""
    block = fenced_block(text)
    return (block if block is not None else text).strip("\n")


def extract_html(text: str) -> str:
    """An ```html block if present, else the whole answer."""
    block = fenced_block(text, "html")
    return (block if block is not None else text).strip()
