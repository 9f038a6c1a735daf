"""Token estimates, for when no tokenizer is at hand: planning against a context window,
fitting context to a budget, and usage a server did not report (marked as estimated).

Text is about 4 characters a token (English text and code, BPE tokenizers); an image is
``width × height / 750`` tokens capped at 1,600 (Anthropic's rule; OpenAI's tiles come
out close), 1,000 when its size is unknown.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4
"""About 4 characters a token (English text and code, BPE tokenizers)."""


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: its length over ``CHARS_PER_TOKEN``, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def image_tokens(width: int | None, height: int | None) -> int:
    """Estimated tokens of an image: ``width × height / 750`` capped at 1,600, 1,000 when
    its size is unknown."""
    if width and height:
        return min(1600, max(1, width * height // 750))
    return 1000
