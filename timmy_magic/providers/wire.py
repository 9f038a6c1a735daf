"""What a server sends, decoded and validated in one place: bytes in, checked values out.

Pure (no sockets, no HTTP client), so every byte split, line ending and JSON value can be
fuzzed directly (tests/reliability/test_wire_fuzz.py). The adapters feed it the raw body
and get back SSE events / NDJSON records, then pass every server-controlled value through
the ``Sanitizer`` before it reaches the router:

- lines end at CRLF, LF or CR (WHATWG HTML 9.2.6), also when a CRLF is split across two
  reads; bytes are decoded per line (a multi-byte character is never split), invalid
  UTF-8 becomes U+FFFD;
- each line and each event is bounded (``MAX_LINE_BYTES``, ``MAX_EVENT_BYTES``): a server
  that sends bytes without a newline fails with ``WireError`` instead of growing a
  buffer without limit;
- answer text must be a string or OpenAI content parts (``[{"type": "text", "text": ...}]``);
  anything else is a protocol error of that provider;
- UTF-16 surrogate pairs split across two deltas (``"\\ud83d"`` then ``"\\ude00"``) are
  joined; a lone surrogate becomes U+FFFD (it cannot be encoded as UTF-8: the terminal,
  jupyter_client's JSON and the chat history all choke on it);
- token counts must be non-negative finite integers below 2**53: anything else is
  "unknown" (the router then estimates them, and says so);
- a served model name must be a short string, else it is ignored.

Lean by design, since it runs once per streamed token: ``SSEReader`` turns a whole
network read into its events in one pass (no generator per line), and ``loads`` parses
with msgspec where it is installed (about 5x faster than the stdlib on a chunk event),
falling back to the stdlib for anything msgspec refuses, so what is accepted and what it
decodes to are the stdlib's (NaN, lone surrogate escapes, overflowing floats).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from timmy_magic.model.errors import TimmyError
from timmy_magic.privacy.redact import REDACT
from timmy_magic.text.markup import shorten

MAX_LINE_BYTES = 4 << 20
"""Longest line accepted (a 1 MiB delta of JSON-escaped text fits several times)."""
MAX_EVENT_BYTES = 4 << 20
"""Largest SSE event (its ``data:`` lines joined)."""
MAX_COUNT = 2**53
MAX_MODEL_CHARS = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WireError(TimmyError, ValueError):
    """The bytes on the wire break the protocol (a line or event too large, bad content)."""


class LineSplitter:
    """Raw bytes, in reads of any size, to complete lines (without their terminator)."""

    __slots__ = ("_buf", "_skip_lf", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = b""
        self._skip_lf = False
        self.max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []
        if not self._skip_lf and b"\r" not in data:  # the usual case: LF line ends
            return self._lf(self._buf + data if self._buf else data)
        if self._skip_lf:  # the read before ended in CR: a LF now completes that CRLF
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if self._buf:
            data, self._buf = self._buf + data, b""
        pieces = data.splitlines(keepends=True)
        out: list[str] = []
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            end = piece[-1:]
            if end == b"\n" or end == b"\r":
                if i == last and end == b"\r":
                    self._skip_lf = True
                out.append(piece.rstrip(b"\r\n").decode("utf-8", "replace"))
            else:
                if len(piece) > self.max_line:
                    raise WireError(f"a line longer than {self.max_line} bytes "
                                    "(no line break)")
                self._buf = piece
        for line in out:
            if len(line) > self.max_line:
                raise WireError(f"a line longer than {self.max_line} bytes")
        return out

    def _lf(self, data: bytes) -> list[str]:
        *lines, rest = data.split(b"\n")
        if len(rest) > self.max_line:
            raise WireError(f"a line longer than {self.max_line} bytes (no line break)")
        self._buf = rest
        out = [line.decode("utf-8", "replace") for line in lines]
        if len(data) > self.max_line:
            for line in out:
                if len(line) > self.max_line:
                    raise WireError(f"a line longer than {self.max_line} bytes")
        return out

    def close(self) -> list[str]:
        """The last line when the body ended without a line break."""
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []


class SSEDecoder:
    """Lines -> (event, data) pairs: fields accumulate until a blank line; comments
    (``:``) and unknown fields are ignored; ``data`` lines are joined with ``\\n``."""

    __slots__ = ("_data", "_event", "_size", "max_event")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self.max_event = max_event

    def line(self, line: str) -> tuple[str, str] | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self.max_event:
                raise WireError(f"an event larger than {self.max_event} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> tuple[str, str] | None:
        if not self._data:
            self._event = ""
            return None
        out = (self._event or "message", "\n".join(self._data))
        self._event, self._data, self._size = "", [], 0
        return out

    def close(self) -> tuple[str, str] | None:
        """A last event the body did not end with a blank line (lenient: kept)."""
        return self._dispatch()


class SSEReader(SSEDecoder):
    """Raw bytes, a whole read at a time, to the (event, data) pairs it completed: the
    rules of ``LineSplitter`` and ``SSEDecoder`` (bounds included) in one pass per read."""

    __slots__ = ("_lines",)

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_event: int = MAX_EVENT_BYTES
                 ) -> None:
        super().__init__(max_event)
        self._lines = LineSplitter(max_line)

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        return self._events(self._lines.feed(data))

    def end(self) -> list[tuple[str, str]]:
        """The events left when the body ended (a last line without a break, a last
        event without a blank line: lenient, kept)."""
        out = self._events(self._lines.close())
        last = self._dispatch()
        return [*out, last] if last is not None else out

    def _events(self, lines: list[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append((self._event or "message", "\n".join(self._data)))
                    self._data, self._size = [], 0
                self._event = ""
            elif line.startswith("data:"):  # the usual line, without a call
                value = line[6:] if line[5:6] == " " else line[5:]
                self._size += len(value) + 1
                if self._size > self.max_event:
                    raise WireError(f"an event larger than {self.max_event} bytes")
                self._data.append(value)
            else:
                self.line(line)
        return out


def sse_lines(splitter: LineSplitter, decoder: SSEDecoder, data: bytes) -> list[tuple[str, str]]:
    """Feed one read; the events it completed."""
    out = []
    for line in splitter.feed(data):
        ev = decoder.line(line)
        if ev is not None:
            out.append(ev)
    return out


_FAST: Any = None
_REFUSED: tuple[type[BaseException], ...] = ()


def _fast_json() -> None:
    """msgspec's decoder, imported with the first event (not by ``%load_ext``)."""
    global _FAST, _REFUSED
    try:
        import msgspec
    except ImportError:  # the stdlib alone: the same values, slower
        _FAST = False
        return
    _FAST = msgspec.json.Decoder().decode
    _REFUSED = (msgspec.MsgspecError, RecursionError)


def loads(text: str) -> Any:
    """JSON from the wire; a ``WireError`` (never a bare ValueError) when it is not.
    msgspec first where installed; what it refuses, the stdlib decides."""
    if _FAST is None:
        _fast_json()
    if _FAST:
        try:
            return _FAST(text)
        except _REFUSED:
            pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {_preview(text)} ({type(exc).__name__})") from None


def _preview(text: str, limit: int = 80) -> str:
    return repr(shorten(text, limit))


# ---------------------------------------------------------------- values


def token_count(value: Any) -> int | None:
    """A token count as sent by a server: a non-negative integer (or integral float)
    below 2**53, else None (unknown). Never a bool, a string, NaN or infinity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < MAX_COUNT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if 0 <= value < MAX_COUNT else None
    return None


def model_name(value: Any) -> str | None:
    """The served model's name if it is a plausible one (a short one-line string)."""
    if not isinstance(value, str) or not value or len(value) > MAX_MODEL_CHARS:
        return None
    value = _CONTROL.sub(" ", fix_surrogates(value)).strip()
    return REDACT(value) or None  # kept in the Result, shown in footers, reprs, history


def content_text(value: Any) -> str:
    """``delta.content`` as text: a string, None (no text), or a list of OpenAI content
    parts whose text parts are joined. Anything else is a ``WireError``."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") not in (None, "text"):
                continue  # an image or audio part: nothing to show as text
            else:
                raise WireError(f"content part is not text: {_preview(json.dumps(part))}")
        return "".join(texts)
    raise WireError(f"content is {type(value).__name__}, not text: "
                    f"{_preview(json.dumps(value))}")


def completion_text(value: Any) -> str:
    """``choices[0].text`` of a plain completion (``/v1/completions``): a string or None
    (no text). Anything else is a ``WireError``."""
    if value is None or isinstance(value, str):
        return value or ""
    raise WireError(f"text is {type(value).__name__}, not a string: "
                    f"{_preview(json.dumps(value, default=str))}")


def fix_surrogates(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TextJoiner:
    """Answer text delta by delta, with surrogate pairs split across deltas joined.

    A delta that ends in a high surrogate keeps it back until the next delta: if that
    starts with the low half, the pair becomes one character; otherwise U+FFFD."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        if not self._held and (text.isascii() or _SURROGATE.search(text) is None):
            return text
        text, self._held = self._held + text, ""
        last = text[-1:]
        if last and "\ud800" <= last <= "\udbff":
            text, self._held = text[:-1], last
        return fix_surrogates(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "\ufffd" if held else ""
