"""Message content in each dialect: text stays a string; a message with images (checked by
``types.content_parts``) becomes what that API takes.

- OpenAI Chat Completions (and every OpenAI-compatible server): a list of ``text`` and
  ``image_url`` parts, the image as a data URL;
- Anthropic Messages: a list of ``text`` and ``image`` blocks, the image as a base64
  ``source`` with its ``media_type``;
- Ollama ``/api/chat``: the text as ``content`` and the images as ``images: [base64]`` on
  the message.
"""

from __future__ import annotations

from typing import Any

from timmy_magic.model.chat import ImagePart, Message, TextPart


def openai_content(m: Message) -> Any:
    c = m.content
    if isinstance(c, str):
        return c
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else
            {"type": "image_url", "image_url": {"url": p.data_url}} for p in c]


def anthropic_content(m: Message) -> Any:
    c = m.content
    if isinstance(c, str):
        return c
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else
            {"type": "image", "source": {"type": "base64", "media_type": p.mime,
                                         "data": p.data}} for p in c]


def ollama_message(m: Message) -> dict[str, Any]:
    if isinstance(m.content, str):
        return {"role": m.role, "content": m.content}
    return {"role": m.role, "content": m.text,
            "images": [p.data for p in m.content if isinstance(p, ImagePart)]}
