"""How our Markdown outputs wrap in a front end: at word boundaries, a token longer than
the line (a URL, a path, a long identifier) broken only where it must, and nothing
scrolling sideways.

JupyterLab gives an output's ``<pre>`` ``word-break: break-all`` (an error block wrapped
mid-word) and its paragraphs and table cells no ``overflow-wrap`` (a long token made the
whole output scroll sideways). Markdown has no classes, so an output of ours is wrapped
in a ``<div>`` whose inline style sets ``overflow-wrap: anywhere`` (inherited by every
paragraph, list item and cell in it), and a block of our text is a ``<pre>`` with the
same rule and ``word-break: normal`` (``markup.md_code(..., style=PRE)``). A front end that
sanitizes styles (an untrusted notebook) shows them as it did before.
"""

from __future__ import annotations

WRAP = "overflow-wrap:anywhere"
PRE = "white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere"
_OPEN = f'<div class="timmy-output" style="{WRAP}">\n\n'
_CLOSE = "\n\n</div>"


def wrapped(markdown: str) -> str:
    """``markdown`` inside a block that wraps as above; the Markdown inside renders as it
    did (a blank line after the opening tag and before the closing one)."""
    return f"{_OPEN}{markdown}{_CLOSE}"



def unwrapped(markdown: str) -> str:
    """The Markdown inside ``wrapped(...)``; ValueError when ``markdown`` is not wrapped."""
    if not (markdown.startswith(_OPEN) and markdown.endswith(_CLOSE)):
        raise ValueError("not an output wrapped by css.wrapped")
    return markdown[len(_OPEN):-len(_CLOSE)]
