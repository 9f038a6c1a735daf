"""Reading the kernel for context: earlier cells from the history, the last exception
and its user-code frames, variables and images from the namespace.

Each reader takes the ``masking.Masker`` of the request (a fresh one when none is given)
and masks the raw values it reads (a cell's source and output, an exception's message,
a variable) before it summarises or cuts them.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from timmy_magic.context.items import (
    MAX_OUTPUT_CHARS,
    CellItem,
    ContextError,
    ContextItem,
    ErrorItem,
    Frame,
    ImageItem,
    VarItem,
)
from timmy_magic.context.summaries import (
    DEFAULT_MAX_CHARS,
    image_bytes,
    image_kind,
    image_size,
    safe_repr,
    str_or_blank,
    summarize,
    type_name,
)
from timmy_magic.model.template import InterpolationError, resolve
from timmy_magic.privacy.masking import Masker

MAX_IMAGE_BYTES = 5 * 1024 * 1024


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


def cells_from_history(shell: Any, spec: str | int, *, include_llm: bool = False,
                       masker: Masker | None = None) -> list[CellItem]:
    """Code cells of this session before the running one, oldest first (see
    ``context``'s docstring for the spec, and which cells are left out), masked."""
    masker = masker or Masker()
    last, start, stop = parse_cells_spec(spec)
    current = running_cell(shell)
    end = current - 1 if stop is None else min(stop, current - 1)
    first = 1 if start is None else start
    if end < first:
        return []
    entries = _history(shell, first, end, masker)
    keep = [(n, src, out) for n, src, out in entries
            if src.strip() and (include_llm or not is_llm_cell(src))]
    if last is not None:
        keep = keep[-last:] if last else []
    return [CellItem.of(n, masker.text(src), None if out is None else masker.text(out))
            for n, src, out in keep]


def running_cell(shell: Any) -> int:
    """The execution count of the cell running now (while a cell runs IPython keeps its
    ExecutionResult on the display hook; IPython 9 has already moved ``execution_count``
    on to the next number by then), else of the next cell."""
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    number = getattr(result, "execution_count", None)
    return number if isinstance(number, int) else int(shell.execution_count)


def _history(shell: Any, first: int, last: int, masker: Masker
             ) -> list[tuple[int, str, str | None]]:
    """(number, raw source, text output) of this session's cells ``first..last``; an
    output object is masked before its repr is cut."""
    hm = shell.history_manager
    rows = []
    for _session, number, entry in hm.get_range(0, first, last + 1, raw=True, output=True):
        source, output = entry if isinstance(entry, tuple) else (entry, None)
        if output is None and number in getattr(hm, "output_hist", {}):
            output = safe_repr(hm.output_hist[number], MAX_OUTPUT_CHARS, masker)
        rows.append((int(number), str(source), None if output is None else str(output)))
    return rows


# ---------------------------------------------------------------- the last error

def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             *(paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
             str(Path(__file__).resolve().parents[1])}
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


_NOT_USER_ERRORS = ("UsageError", "StreamInterrupted")
_REMEMBERED = "_timmy_last_error"


def _user_error(exc: object) -> bool:
    """An exception of the user's code: not a magic's usage error, not an interrupt."""
    return (isinstance(exc, BaseException) and not isinstance(exc, KeyboardInterrupt)
            and type(exc).__name__ not in _NOT_USER_ERRORS)


def remember_error(shell: Any, exc: BaseException | None) -> None:
    """Called after each cell (the extension's post_run_cell hook): the last exception of
    user code, kept on the shell, so a mistyped ``%llm`` line in between does not
    replace it (``sys.last_value`` would hold the UsageError)."""
    if _user_error(exc):
        setattr(shell, _REMEMBERED, exc)


def _last_exception(shell: Any) -> BaseException | None:
    kept = getattr(shell, _REMEMBERED, None)
    if _user_error(kept):
        return kept
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return exc if _user_error(exc) else None


def last_error(shell: Any, masker: Masker | None = None) -> ErrorItem | None:
    """The exception of user code IPython last showed, with its cell and user-code
    frames, masked; None if there was none."""
    masker = masker or Masker()
    exc = _last_exception(shell)
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
    return _error_item(exc, outer_cell, source, tuple(frames), library, masker)


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
                frames: tuple[Frame, ...], library: int, masker: Masker) -> ErrorItem:
    etype = type_name(exc)
    message = masker.text(str_or_blank(exc)) or safe_repr(exc, 300, masker)
    source = None if source is None else masker.text(source)
    frames = masker.value(frames)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return ErrorItem.of(name=type(exc).__name__, type=etype, message=message,
                        cause=None if cause is None else
                        f"{type_name(cause)}: {masker.text(str_or_blank(cause))}",
                        cell_number=cell, cell_source=source, frames=frames,
                        library_frames=library)


# ---------------------------------------------------------------- variables

def var_items(shell: Any, names: Iterable[str], *, max_chars: int = DEFAULT_MAX_CHARS,
              masker: Masker | None = None) -> list[ContextItem]:
    """One item per name (``df``, ``obj.attr``, ``d["k"]``): an image as an ImageItem,
    anything else masked and summarised. ContextError naming an unknown or failing
    name."""
    masker = masker or Masker()
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
        value = masker.named(name, value)
        items.append(image_item(name, value, masker) or VarItem(
            name=name, text=summarize(value, max_chars=max_chars, masker=masker),
            type_name=type_name(value)))
    return items


def image_item(name: str, value: object, masker: Masker | None = None) -> ImageItem | None:
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
    text = (f"{summarize(value, masker=masker)} (attached as an image, {mime}, "
            f"{len(data):,} bytes)")
    return ImageItem(name=name, text=text, data=data, mime=mime, width=width, height=height)
