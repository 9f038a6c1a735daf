"""What a prompt's context is made of: cells, variables, an error, images.

Each item knows its heading, the text the model reads, its estimated tokens
(``model.tokens``: about 4 characters a token; an image by its size) and whether it was
cut.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from timmy_magic.model.chat import ImagePart
from timmy_magic.model.errors import TimmyError
from timmy_magic.model.tokens import estimate_tokens, image_tokens
from timmy_magic.text.markup import count, fence

MAX_CELL_CHARS = 4000
MAX_OUTPUT_CHARS = 1500
Kind = Literal["cell", "var", "error", "image"]


class ContextError(TimmyError):
    """What was asked for is not in the kernel (an unknown variable, no error yet, a bad
    ``--cells`` spec); the message is one line for the user."""


def cut_middle(text: str, max_chars: int) -> str:
    """Keep the start (2/3) and the end (1/3) of ``text`` around a marker."""
    if len(text) <= max_chars:
        return text
    marker = f"\n… [{len(text) - max_chars:,} characters cut] …\n"
    keep = max(0, max_chars - len(marker))
    head = keep * 2 // 3
    return text[:head] + marker + text[len(text) - (keep - head):]


# ---------------------------------------------------------------- items

@dataclass(frozen=True, kw_only=True)
class ContextItem:
    """One thing sent as context. ``text`` is exactly what the model reads under the
    item's heading; ``cut`` says it was shortened (or, in ``Context.dropped``, left out)."""

    kind: Kind
    name: str
    text: str
    cut: bool = False

    @property
    def heading(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def lang(self) -> str:
        return "text"

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.block())

    def block(self) -> str:
        """The item as the prompt carries it: a heading and the text in a fence."""
        return f"### {self.heading}\n{fence(self.text, self.lang)}"

    def shortened(self, max_chars: int) -> ContextItem:
        if len(self.text) <= max_chars:
            return self
        return dataclasses.replace(self, text=cut_middle(self.text, max_chars), cut=True)

    def row(self, *, dropped: bool = False) -> dict[str, Any]:
        """For ``Result.context``: kind, name, characters, estimated tokens, cut."""
        return {"kind": self.kind, "name": self.name, "characters": self.characters,
                "tokens": 0 if dropped else self.tokens, "cut": self.cut or dropped,
                "dropped": dropped}


@dataclass(frozen=True, kw_only=True)
class CellItem(ContextItem):
    kind: Kind = "cell"
    number: int
    source: str
    output: str | None = None

    @property
    def heading(self) -> str:
        return f"Cell In[{self.number}]"

    @property
    def lang(self) -> str:
        return "python"

    @classmethod
    def of(cls, number: int, source: str, output: str | None) -> CellItem:
        src = cut_middle(source.rstrip("\n"), MAX_CELL_CHARS)
        out = None if output is None else cut_middle(output, MAX_OUTPUT_CHARS)
        text = src if out is None else f"{src}\n# Out[{number}]:\n" + _comment(out)
        return cls(name=f"In[{number}]", text=text, number=number, source=source,
                   output=output, cut=src != source.rstrip("\n") or out != output)


def _comment(text: str) -> str:
    return "\n".join(f"# {line}" if line else "#" for line in text.splitlines())


@dataclass(frozen=True, kw_only=True)
class VarItem(ContextItem):
    kind: Kind = "var"
    type_name: str = ""

    @property
    def heading(self) -> str:
        return f"Variable `{self.name}`"


@dataclass(frozen=True)
class Frame:
    """One traceback frame in user code: ``In[5]`` or a short path, line, function."""

    where: str
    lineno: int | None
    function: str
    line: str

    def __str__(self) -> str:
        at = f"{self.where}, line {self.lineno}" if self.lineno else self.where
        return f"  {at}, in {self.function}" + (f"\n    {self.line}" if self.line else "")


@dataclass(frozen=True, kw_only=True)
class ErrorItem(ContextItem):
    kind: Kind = "error"
    type: str
    message: str
    cell_number: int | None = None
    cell_source: str | None = None
    frames: tuple[Frame, ...] = ()
    library_frames: int = 0
    cause: str | None = None
    """``type: message`` of the exception this one was raised while handling."""

    @classmethod
    def of(cls, *, name: str, type: str, message: str, cause: str | None = None,
           cell_number: int | None = None, cell_source: str | None = None,
           frames: tuple[Frame, ...] = (), library_frames: int = 0) -> ErrorItem:
        """The item with its text: the error, its cause, the failing cell, the user-code
        traceback (the message first, so a cut takes it first: see ``shortened``)."""
        item = cls(name=name, text="", type=type, message=message, cause=cause,
                   cell_number=cell_number, cell_source=cell_source, frames=frames,
                   library_frames=library_frames)
        lines = [f"{type}: {message}"]
        if cause is not None:
            lines.append(f"(raised while handling {cause})")
        if cell_source is not None:
            lines += [f"\nThe failing cell, In[{cell_number}]:", cell_source]
        tb_text = item.traceback_text()
        return dataclasses.replace(item, text="\n".join(
            lines + ([f"\n{tb_text}"] if tb_text else [])))

    def with_source(self, cell_source: str) -> ErrorItem:
        """The same error, with ``cell_source`` as the failing cell."""
        return ErrorItem.of(name=self.name, type=self.type, message=self.message,
                            cause=self.cause, cell_number=self.cell_number,
                            cell_source=cell_source, frames=self.frames,
                            library_frames=self.library_frames)

    @property
    def heading(self) -> str:
        where = f" in In[{self.cell_number}]" if self.cell_number is not None else ""
        return f"Last error: {self.type}{where}"

    def shortened(self, max_chars: int) -> ContextItem:
        """The message is cut first (a 1.6 MB ``KeyError`` is mostly message); the failing
        cell and the traceback are kept while they fit."""
        if len(self.text) <= max_chars:
            return self
        rest = len(self.text) - len(self.message)
        if self.message and self.message in self.text and rest < max_chars:
            message = cut_middle(self.message, max(max_chars - rest, 40))
            text = self.text.replace(self.message, message, 1)
            if len(text) <= max_chars:
                return dataclasses.replace(self, text=text, message=message, cut=True)
        return dataclasses.replace(self, text=cut_middle(self.text, max_chars), cut=True)

    def traceback_text(self) -> str:
        lines = [str(f) for f in self.frames]
        if self.library_frames:
            lines.append(f"  ({count(self.library_frames, 'library frame')} not shown)")
        head = "Traceback (user code only, most recent call last):"
        return "\n".join([head, *lines]) if lines else ""


@dataclass(frozen=True, kw_only=True)
class ImageItem(ContextItem):
    """An image for a vision model; ``text`` is what a text-only model reads instead."""

    kind: Kind = "image"
    data: bytes = field(repr=False)
    mime: str
    width: int | None = None
    height: int | None = None

    @property
    def heading(self) -> str:
        return f"Image `{self.name}`"

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)

    def part(self) -> ImagePart:
        """The image as a message part (for a provider whose model has ``vision``)."""
        return ImagePart.of(self.data, self.mime, self.width, self.height)

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"

    def shortened(self, max_chars: int) -> ContextItem:
        return self
