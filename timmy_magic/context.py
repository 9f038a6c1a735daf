"""The model sees the notebook: earlier cells, kernel variables, the last error and images
as context for a prompt, cut to a token budget, with secrets masked (issue 13).

Pure and kernel-side: it reads the shell (history, namespace, the last exception) and
returns values; it sends nothing and displays nothing. The magic wires it up::

    ctx = build_context(shell, prompt, cells="3", names=["df"], error=True,
                        system=system, extra_secrets=())
    ctx = ctx.fit(window - max_tokens)       # oldest cells dropped first, then values cut
    ctx.render_markdown()                    # --show-context
    request = ChatRequest(messages=ctx.as_messages(), ...)
    ctx.note()                               # "context: 3 cells, 1 var, ~1.2k tokens ..."

Decisions, so the wiring need not make them:

- **Tokens** are estimated at 4 characters a token (``CHARS_PER_TOKEN``), an image at
  ``width × height / 750`` capped at 1,600 (Anthropic's rule; OpenAI's tiles come out
  close), 1,000 when its size is unknown.
- **Cells**: ``"N"`` is the previous N code cells before the running one; ``"A:B"`` the
  execution counts A to B *inclusive* (as ``%history A-B``), ``"A:"`` from A on, ``":B"``
  up to B. Only the current session. ``%%llm`` / ``%llm`` cells and empty cells are left
  out (they are prompts, not the user's code; ``include_llm=True`` keeps them). A cell's
  output is its ``Out[n]`` as IPython displayed it (text/plain); what a cell *printed* is
  not kept by IPython, so it is not available.
- **Errors**: the exception IPython last showed (``sys.last_exc`` / ``sys.last_value``).
  The failing cell is the outermost cell frame of the traceback (the cell that was run), or
  the cell a SyntaxError names. Frames are user code only: cells and files outside the
  interpreter's prefix, site-packages and timmy_magic; library frames are counted, not shown.
- **Secrets**: everything in a Context (prompt, system prompt, every item) is masked with
  ``***``: values registered with ``secrets.REDACT`` (every configured key and header),
  values of environment variables whose names look secret, ``extra_secrets``, and what
  plainly is a credential (``sk-...``, ``Bearer ...``, a URL password). ``name=value``
  patterns are *not* masked here: in code they are arguments (``api_key=key``), not
  secrets. An image is sent as it is: pixels cannot be masked.
"""

from __future__ import annotations

import base64
import dataclasses
import linecache
import math
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import secrets as _secrets
from .errors import TimmyError
from .formats import fenced_block
from .interpolate import InterpolationError, resolve
from .markup import md, md_code
from .summaries import (
    DEFAULT_MAX_CHARS,
    image_bytes,
    image_kind,
    image_size,
    safe_repr,
    str_or_blank,
    summarize,
    type_name,
)
from .types import Message

CHARS_PER_TOKEN = 4
"""Token estimate: about 4 characters a token (English text and code, BPE tokenizers)."""
MAX_CELL_CHARS = 4000
MAX_OUTPUT_CHARS = 1500
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_CUT_CHARS = 200
"""A value is never shortened below this: dropping it is then more honest."""
MASK = _secrets.HIDDEN
SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
MIN_ENV_SECRET = 8
Kind = Literal["cell", "var", "error", "image"]
_ORDER: dict[str, int] = {"cell": 0, "var": 1, "error": 2, "image": 3}
_T = TypeVar("_T")


class ContextError(TimmyError):
    """What was asked for is not in the kernel (an unknown variable, no error yet, a bad
    ``--cells`` spec); the message is one line for the user."""


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def short_count(n: int) -> str:
    """850 -> ``850``, 1234 -> ``1.2k``, 12345 -> ``12k``."""
    if n < 1000:
        return str(n)
    return f"{n / 1000:.1f}k" if n < 10_000 else f"{round(n / 1000)}k"


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

    @property
    def heading(self) -> str:
        where = f" in In[{self.cell_number}]" if self.cell_number is not None else ""
        return f"Last error: {self.type}{where}"

    def traceback_text(self) -> str:
        lines = [str(f) for f in self.frames]
        if self.library_frames:
            lines.append(f"  ({self.library_frames} library frame"
                         f"{'s' if self.library_frames != 1 else ''} not shown)")
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
        if self.width and self.height:
            return min(1600, max(1, self.width * self.height // 750))
        return 1000

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"

    def shortened(self, max_chars: int) -> ContextItem:
        return self


def fence(text: str, lang: str = "text") -> str:
    """``text`` in a backtick fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}"


# ---------------------------------------------------------------- secrets

def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values (>= 8 characters) of environment variables whose names look secret."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items()
            if SECRET_ENV_NAME.search(k) and len(v) >= MIN_ENV_SECRET]


def _registered_secrets() -> list[str]:
    """Every form of every secret a loaded config registered with ``secrets.REDACT``."""
    return list(_secrets.REDACT._table[1])


def mask_secrets(text: str, extra_secrets: Iterable[str] = (), *,
                 environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``text`` with every secret replaced by ``***``, and how many were replaced."""
    values = {s for s in extra_secrets if s and len(s) >= 4}
    values.update(_registered_secrets(), secret_env_values(environ))
    n = 0
    if values:
        pattern = re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True))))
        text, n = pattern.subn(MASK, text)
    text, g = _mask_credentials(text)
    return text, n + g


def _mask_credentials(text: str) -> tuple[str, int]:
    """``secrets``' generic patterns (sk- keys, Bearer/Basic, URL passwords) except
    ``name=value``, which in code is an argument, not a secret."""
    if not _secrets._may_hold_credential(text):
        return text, 0
    count = 0

    def one(m: re.Match[str]) -> str:
        nonlocal count
        if m.group("value") is not None:
            return m.group()
        out = _secrets._generic(m)
        count += out != m.group()
        return out

    return _secrets._GENERIC.sub(one, text), count


def _mask_value(value: _T, secrets: Sequence[str], environ: Mapping[str, str] | None
                ) -> tuple[_T, int]:
    """Mask every string in a value: a str, a tuple of them, a dataclass's fields."""
    if isinstance(value, str):
        masked, n = mask_secrets(value, secrets, environ=environ)
        return masked, n  # type: ignore[return-value]
    if isinstance(value, tuple):
        pairs = [_mask_value(v, secrets, environ) for v in value]
        return tuple(p[0] for p in pairs), sum(p[1] for p in pairs)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes: dict[str, Any] = {}
        total = 0
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new, n = _mask_value(old, secrets, environ)
            if n:
                changes[f.name], total = new, total + n
        return (dataclasses.replace(value, **changes) if changes else value), total
    return value, 0


def mask_item(item: _T, extra_secrets: Sequence[str] = (), *,
              environ: Mapping[str, str] | None = None) -> tuple[_T, int]:
    """An item (or any dataclass, string or tuple) with every string field masked. The
    count is of the text sent (a secret in both ``text`` and ``source`` counts once)."""
    masked, _ = _mask_value(item, extra_secrets, environ)
    text = getattr(item, "text", item if isinstance(item, str) else "")
    return masked, mask_secrets(text, extra_secrets, environ=environ)[1]


# ---------------------------------------------------------------- cells

def parse_cells_spec(spec: str | int) -> tuple[int | None, int | None, int | None]:
    """``"3"`` -> (3, None, None): the last 3; ``"2:5"`` -> (None, 2, 5); ``"2:"`` ->
    (None, 2, None); ``":5"`` -> (None, 1, 5). ContextError for anything else."""
    text = str(spec).strip()
    m = re.fullmatch(r"(\d+)|(\d*):(\d*)", text)
    if m is None or text == ":":
        raise ContextError(f"--cells takes N (the previous N cells) or A:B (execution "
                           f"counts A to B), not {text!r}")
    if m.group(1) is not None:
        return int(m.group(1)), None, None
    a, b = int(m.group(2) or 1), (int(m.group(3)) if m.group(3) else None)
    if b is not None and b < a:
        raise ContextError(f"--cells {text}: the range is empty ({b} < {a})")
    return None, max(a, 1), b


def is_llm_cell(source: str) -> bool:
    """A cell that is a ``%%llm`` prompt or ``%llm`` command (not the user's code)."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return bool(re.match(r"%%?llm\b", first))


def cells_from_history(shell: Any, spec: str | int, *, include_llm: bool = False
                       ) -> list[CellItem]:
    """Code cells of this session before the running one, oldest first (see the module
    docstring for the spec, and which cells are left out)."""
    last, start, stop = parse_cells_spec(spec)
    current = running_cell(shell)
    end = current - 1 if stop is None else min(stop, current - 1)
    first = 1 if start is None else start
    if end < first:
        return []
    entries = _history(shell, first, end)
    keep = [(n, src, out) for n, src, out in entries
            if src.strip() and (include_llm or not is_llm_cell(src))]
    if last is not None:
        keep = keep[-last:] if last else []
    return [CellItem.of(n, src, out) for n, src, out in keep]


def running_cell(shell: Any) -> int:
    """The execution count of the cell running now (while a cell runs IPython keeps its
    ExecutionResult on the display hook; IPython 9 has already moved ``execution_count``
    on to the next number by then), else of the next cell."""
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    number = getattr(result, "execution_count", None)
    return number if isinstance(number, int) else int(shell.execution_count)


def _history(shell: Any, first: int, last: int) -> list[tuple[int, str, str | None]]:
    """(number, raw source, text output) of this session's cells ``first..last``."""
    hm = shell.history_manager
    rows = []
    for _session, number, entry in hm.get_range(0, first, last + 1, raw=True, output=True):
        source, output = entry if isinstance(entry, tuple) else (entry, None)
        if output is None and number in getattr(hm, "output_hist", {}):
            output = safe_repr(hm.output_hist[number], MAX_OUTPUT_CHARS)
        rows.append((int(number), str(source), None if output is None else str(output)))
    return rows


# ---------------------------------------------------------------- the last error

def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             *(paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
             str(Path(__file__).resolve().parent)}
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):
        return True  # <frozen ...>, <string>: not a cell (cells are checked first)
    real = os.path.realpath(filename)
    return ("site-packages" in real or "dist-packages" in real
            or real.startswith(_library_roots()))


def _cell_map(shell: Any) -> dict[str, int]:
    compiler = getattr(shell, "compile", None)
    mapping = getattr(compiler, "_filename_map", None)
    return dict(mapping) if isinstance(mapping, dict) else {}


def _short_path(filename: str) -> str:
    parts = Path(filename).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 else filename


def _last_exception() -> BaseException | None:
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return exc if isinstance(exc, BaseException) else None


def last_error(shell: Any) -> ErrorItem | None:
    """The exception IPython last showed, with its cell and user-code frames; None if
    there was none."""
    exc = _last_exception()
    if exc is None:
        return None
    cells = _cell_map(shell)
    tb = exc.__traceback__ or getattr(sys, "last_traceback", None)
    frames, library, outer_cell = _user_frames(traceback.extract_tb(tb), cells)
    if isinstance(exc, SyntaxError) and exc.filename in cells:
        outer_cell = outer_cell or cells[exc.filename]
        frames.append(Frame(f"In[{cells[exc.filename]}]", exc.lineno, "<module>",
                            (exc.text or "").rstrip()))
    source = _cell_source(shell, outer_cell, cells) if outer_cell is not None else None
    return _error_item(exc, outer_cell, source, tuple(frames), library)


def _user_frames(summary: traceback.StackSummary, cells: dict[str, int]
                 ) -> tuple[list[Frame], int, int | None]:
    frames: list[Frame] = []
    library = 0
    outer: int | None = None
    for fs in summary:
        if fs.filename in cells:
            outer = cells[fs.filename] if outer is None else outer
            frames.append(Frame(f"In[{cells[fs.filename]}]", fs.lineno, fs.name,
                                (fs.line or "").strip()))
        elif _is_library(fs.filename):
            library += 1
        else:
            frames.append(Frame(_short_path(fs.filename), fs.lineno, fs.name,
                                (fs.line or "").strip()))
    return frames, library, outer


def _cell_source(shell: Any, number: int, cells: dict[str, int]) -> str | None:
    raw = getattr(shell.history_manager, "input_hist_raw", [])
    if 0 < number < len(raw) and raw[number].strip():
        return str(raw[number]).rstrip("\n")
    for name, n in cells.items():
        if n == number and name in linecache.cache:
            return "".join(linecache.getlines(name)).rstrip("\n")
    return None


def _error_item(exc: BaseException, cell: int | None, source: str | None,
                frames: tuple[Frame, ...], library: int) -> ErrorItem:
    etype = type_name(exc)
    message = str_or_blank(exc) or safe_repr(exc)
    lines = [f"{etype}: {message}"]
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        lines.append(f"(raised while handling {type_name(cause)}: {str_or_blank(cause)})")
    if source is not None:
        lines += [f"\nThe failing cell, In[{cell}]:", source]
    item = ErrorItem(name=type(exc).__name__, text="", type=etype, message=message,
                     cell_number=cell, cell_source=source, frames=frames,
                     library_frames=library)
    tb_text = item.traceback_text()
    text = "\n".join(lines + ([f"\n{tb_text}"] if tb_text else []))
    return dataclasses.replace(item, text=text)


# ---------------------------------------------------------------- variables

def var_items(shell: Any, names: Iterable[str], *, max_chars: int = DEFAULT_MAX_CHARS
              ) -> list[ContextItem]:
    """One item per name (``df``, ``obj.attr``, ``d["k"]``): an image as an ImageItem,
    anything else summarised. ContextError naming an unknown or failing name."""
    items: list[ContextItem] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            value = resolve(name, shell.user_ns)
        except InterpolationError as exc:
            raise ContextError(f"--vars {name}: " + str(exc).split(": ", 1)[-1]
                               .split(" (write {{")[0]) from None
        items.append(image_item(name, value) or VarItem(
            name=name, text=summarize(value, max_chars=max_chars), type_name=type_name(value)))
    return items


def image_item(name: str, value: object) -> ImageItem | None:
    """An ImageItem for a matplotlib Figure, PIL image or IPython Image; None otherwise,
    and ContextError when it is an image that cannot be turned into bytes."""
    kind = image_kind(value)
    if kind is None:
        return None
    try:
        data, mime = image_bytes(value, kind)
    except Exception as exc:  # noqa: BLE001 - savefig / PIL may raise anything
        raise ContextError(f"--vars {name}: the image could not be encoded "
                           f"({type(exc).__name__}: {str_or_blank(exc)})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ContextError(f"--vars {name}: the image is {len(data):,} bytes, over the "
                           f"{MAX_IMAGE_BYTES:,}-byte limit")
    try:
        width, height = image_size(value, kind)
    except Exception:  # noqa: BLE001 - size is only for the estimate
        width = height = None  # type: ignore[assignment]
    text = f"{summarize(value)} (attached as an image, {mime}, {len(data):,} bytes)"
    return ImageItem(name=name, text=text, data=data, mime=mime, width=width, height=height)


# ---------------------------------------------------------------- the context

INTRO = ("Context from the user's Jupyter notebook kernel follows (secrets are masked "
         f"as {MASK}).")


@dataclass(frozen=True)
class Context:
    """A prompt with its context items: what would be sent, and what was cut."""

    prompt: str
    items: tuple[ContextItem, ...] = ()
    system: str | None = None
    dropped: tuple[ContextItem, ...] = ()
    masked: int = 0
    budget: int | None = None

    # -- what is sent

    def prompt_text(self, *, vision: bool = False) -> str:
        """The user message: the context blocks, then the prompt. Images show as their
        description (with ``vision`` they go as image parts too, see ``user_parts``)."""
        if not self.items:
            return self.prompt
        blocks = [INTRO, *(self._block(i, vision) for i in self.items)]
        return "\n\n".join(blocks + [f"### Request\n{self.prompt}"])

    def _block(self, item: ContextItem, vision: bool) -> str:
        if isinstance(item, ImageItem) and not vision:
            return f"### {item.heading}\n(an image; this model cannot see it: {item.text})"
        return item.block()

    def as_messages(self) -> tuple[Message, ...]:
        """System (if any) and user messages, text only: ready for ``ChatRequest``."""
        system = (Message("system", self.system),) if self.system else ()
        return (*system, Message("user", self.prompt_text()))

    def user_parts(self) -> list[dict[str, Any]]:
        """The user message as OpenAI-style content parts: the text, then each image as
        an ``image_url`` part with a data URL (for providers with ``vision``)."""
        parts: list[dict[str, Any]] = [{"type": "text", "text": self.prompt_text(vision=True)}]
        parts += [{"type": "image_url", "image_url": {"url": i.data_url()}}
                  for i in self.images]
        return parts

    @property
    def images(self) -> tuple[ImageItem, ...]:
        return tuple(i for i in self.items if isinstance(i, ImageItem))

    @property
    def needs_vision(self) -> bool:
        return bool(self.images)

    # -- sizes

    @property
    def context_tokens(self) -> int:
        """Estimated tokens of the context alone (the items)."""
        return sum(i.tokens for i in self.items)

    def total_tokens(self, *, vision: bool = False) -> int:
        """Estimated tokens of everything sent: system, prompt, context, images."""
        text = estimate_tokens(self.prompt_text(vision=vision)) + (
            estimate_tokens(self.system) if self.system else 0)
        return text + (sum(i.tokens for i in self.images) if vision else 0)

    def fit(self, budget_tokens: int, *, vision: bool = False) -> Context:
        """A Context whose ``total_tokens`` fits ``budget_tokens`` (the window less
        ``max_tokens``): oldest cells dropped first, then long values shortened (evenly,
        never below ``MIN_CUT_CHARS``), then images, then the largest items dropped. The
        prompt and system prompt are never cut."""
        ctx = dataclasses.replace(self, budget=budget_tokens)
        while ctx._over(vision) and any(i.kind == "cell" for i in ctx.items):
            ctx = ctx._drop(next(i for i in ctx.items if i.kind == "cell"))
        if ctx._over(vision):
            ctx = ctx._shorten_values(budget_tokens, vision)
        while ctx._over(vision) and ctx.images:
            ctx = ctx._drop(ctx.images[0])
        while ctx._over(vision) and ctx.items:
            ctx = ctx._drop(max(ctx.items, key=lambda i: i.tokens))
        return ctx

    def _over(self, vision: bool) -> bool:
        return self.budget is not None and self.total_tokens(vision=vision) > self.budget

    def _drop(self, item: ContextItem) -> Context:
        items = tuple(i for i in self.items if i is not item)
        return dataclasses.replace(self, items=items,
                                   dropped=(*self.dropped, dataclasses.replace(item, cut=True)))

    def _shorten_values(self, budget: int, vision: bool) -> Context:
        """Water-filling: the text items share what the budget leaves; those under their
        share keep everything, the others are cut to it."""
        bare = dataclasses.replace(self, items=tuple(
            i.shortened(0) if not isinstance(i, ImageItem) else i for i in self.items))
        spare = (budget - bare.total_tokens(vision=vision)) * CHARS_PER_TOKEN
        texts = sorted((i for i in self.items if not isinstance(i, ImageItem)),
                       key=lambda i: i.characters)
        limits: dict[int, int] = {}
        for k, item in enumerate(texts):
            share = max(0, spare) // (len(texts) - k)
            limits[id(item)] = max(MIN_CUT_CHARS, share)
            spare -= min(item.characters, share)
        return dataclasses.replace(self, items=tuple(
            i.shortened(limits[id(i)]) if id(i) in limits else i for i in self.items))

    # -- what is shown

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.kind] = out.get(item.kind, 0) + 1
        return out

    def note(self) -> str:
        """``context: 3 cells, 2 vars, ~1.2k tokens (cut: 1 cell; 2 secrets masked)``;
        empty when there is no context and nothing was masked."""
        if not self.items and not self.dropped and not self.masked:
            return ""
        parts = [_plural(n, kind) for kind, n in _sorted_counts(self.counts())]
        head = "context: " + ", ".join(parts + [f"~{short_count(self.context_tokens)} tokens"])
        extra = []
        cut = _sorted_counts(_count_kinds([*self.dropped, *(i for i in self.items if i.cut)]))
        if cut:
            extra.append("cut: " + ", ".join(_plural(n, k) for k, n in cut))
        if self.masked:
            extra.append(f"{_plural(self.masked, 'secret')} masked")
        return head + (f" ({'; '.join(extra)})" if extra else "")

    def rows(self) -> list[dict[str, Any]]:
        """Each item sent, then each dropped: for ``Result.context``."""
        return [i.row() for i in self.items] + [i.row(dropped=True) for i in self.dropped]

    def render_markdown(self) -> str:
        """For ``--show-context``: the note, a table of the items, and the exact text."""
        lines = [f"**{md(self.note() or 'no context')}**", "",
                 "| kind | name | characters | ~tokens | |", "| --- | --- | ---: | ---: | --- |"]
        for row in self.rows():
            status = "dropped" if row["dropped"] else ("shortened" if row["cut"] else "")
            lines.append(f"| {row['kind']} | {md(row['name']).replace('|', '&#124;')} | "
                         f"{row['characters']:,} | {row['tokens']:,} | {status} |")
        if self.budget is not None:
            lines += ["", md(f"Budget: {self.budget:,} tokens; this request: "
                             f"~{self.total_tokens():,}.")]
        if self.system:
            lines += ["", "System prompt:", "", md_code(self.system)]
        lines += ["", "User message:", "", md_code(self.prompt_text(), "markdown")]
        return "\n".join(lines)


def _count_kinds(items: Iterable[ContextItem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item.kind] = out.get(item.kind, 0) + 1
    return out


def _sorted_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 9))


def _plural(n: int, noun: str) -> str:
    noun = {"var": "var", "cell": "cell"}.get(noun, noun)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_context(shell: Any, prompt: str, *, cells: str | int | None = None,
                  names: Iterable[str] = (), error: bool = False, system: str | None = None,
                  extra_secrets: Sequence[str] = (), include_llm: bool = False,
                  max_value_chars: int = DEFAULT_MAX_CHARS,
                  environ: Mapping[str, str] | None = None) -> Context:
    """Everything ``%%llm --cells/--vars/--error`` asks for, masked, in prompt order:
    cells (oldest first), variables, the error, images. ContextError when a name is
    unknown or ``error`` is set and there was none."""
    items: list[ContextItem] = []
    if cells is not None:
        items += cells_from_history(shell, cells, include_llm=include_llm)
    items += var_items(shell, names, max_chars=max_value_chars)
    if error:
        err = last_error(shell)
        if err is None:
            raise ContextError("--error: no exception has been raised in this kernel yet")
        items.append(err)
    items.sort(key=lambda i: _ORDER[i.kind])
    return masked_context(Context(prompt=prompt, items=tuple(items), system=system),
                          extra_secrets, environ=environ)


def masked_context(ctx: Context, extra_secrets: Sequence[str] = (), *,
                   environ: Mapping[str, str] | None = None) -> Context:
    """``ctx`` with prompt, system prompt and every item masked; ``masked`` counts."""
    total = 0
    items = []
    for item in ctx.items:
        masked, n = mask_item(item, extra_secrets, environ=environ)
        items.append(masked)
        total += n
    prompt, n_prompt = mask_secrets(ctx.prompt, extra_secrets, environ=environ)
    system, n_system = (mask_secrets(ctx.system, extra_secrets, environ=environ)
                        if ctx.system else (ctx.system, 0))
    return dataclasses.replace(ctx, prompt=prompt, system=system, items=tuple(items),
                               masked=ctx.masked + total + n_prompt + n_system)


# ---------------------------------------------------------------- fix and explain

FIX_SYSTEM = (
    "You fix Python code in Jupyter notebook cells. Reply with exactly one line that "
    "explains the fix, then the corrected cell, complete (not a diff, not only the changed "
    "lines), in a single ```python code block. Nothing after the code block.")
EXPLAIN_SYSTEM = (
    "You explain Python errors in Jupyter notebooks to the person who hit them. Say what "
    "went wrong and why, in plain words, pointing at the line in their cell, and how they "
    "could fix it. Be brief. Do not write out a corrected cell.")


def _error_prompt(error: ErrorItem, cell_source: str | None) -> str:
    source = cell_source if cell_source is not None else error.cell_source
    where = f"In[{error.cell_number}]" if error.cell_number is not None else "the cell"
    parts = [f"The cell {where} raised {error.type}: {error.message}"]
    if source is not None:
        parts += ["", "The cell:", fence(source, "python")]
    tb = error.traceback_text()
    if tb:
        parts += ["", fence(tb)]
    return "\n".join(parts)


def fix_request(error: ErrorItem, cell_source: str | None = None, *,
                extra_secrets: Sequence[str] = ()) -> tuple[str, str]:
    """(system, user) asking for the corrected complete cell in one ```python block,
    with a one-line explanation before it. Masked."""
    user = _error_prompt(error, cell_source) + "\n\nFix the cell."
    return FIX_SYSTEM, mask_secrets(user, extra_secrets)[0]


def explain_request(error: ErrorItem, cell_source: str | None = None, *,
                    extra_secrets: Sequence[str] = ()) -> tuple[str, str]:
    """(system, user) asking to explain the error, no code. Masked."""
    user = _error_prompt(error, cell_source) + "\n\nExplain this error."
    return EXPLAIN_SYSTEM, mask_secrets(user, extra_secrets)[0]


def error_context(shell: Any, mode: Literal["fix", "explain"], *,
                  extra_secrets: Sequence[str] = ()) -> Context:
    """``%llm fix`` / ``%llm explain`` as a Context (so fitting, the note and the masked
    count work as for ``%%llm``). ContextError when there is no error."""
    err = last_error(shell)
    if err is None:
        raise ContextError(f"%llm {mode}: no exception has been raised in this kernel yet")
    system = FIX_SYSTEM if mode == "fix" else EXPLAIN_SYSTEM
    ask = "Fix the cell." if mode == "fix" else "Explain this error."
    prompt = f"{_error_prompt(err, None)}\n\n{ask}"
    return masked_context(Context(prompt=prompt, system=system), extra_secrets)


def split_fix(answer: str) -> tuple[str, str | None]:
    """A fix answer as (the explanation before the code block, the code) ; code is None
    when the answer holds no fenced block."""
    code = fenced_block(answer, "python")
    if code is None:
        code = fenced_block(answer)
    if code is None:
        return answer.strip(), None
    start = re.search(r"^[ \t]*(`{3,}|~{3,})", answer, re.MULTILINE)
    explanation = answer[: start.start()].strip() if start else ""
    return explanation, code
