"""Summaries of kernel values that a model can use and a person can read.

``summarize(value, max_chars=..., masker=...)`` masks first, then summarises, then cuts:
the masker (``masking.Masker``) sees the raw strings (a container's items, a DataFrame's
shown rows and column names) before any repr escapes or cuts them, and the summary's text
before it is cut, so a cut can never leave part of a secret. It never raises and never imports pandas, numpy,
matplotlib or PIL: a value is recognised by the module and name of the classes in its type's
MRO (``pandas.core.frame.DataFrame``...), and the library, being the value's own, is
already loaded when a method of the value runs. A ``__repr__``/``__str__`` that raises
shows as ``<repr failed: ...>``.

What each kind shows:

- pandas DataFrame: shape, dtypes, ``head()``, ``describe()`` of the numeric columns;
  Series: length, dtype, name, head, describe when numeric;
- numpy ndarray: shape, dtype, a few values (numpy's own summarised printing), and min /
  max / mean for numbers;
- dict, list, tuple, set, frozenset: length and a bounded repr (``reprlib``: never the
  repr of the whole thing);
- str, bytes: length and the text cut to fit, with the full length said;
- functions, methods and classes: signature and the first line of the docstring (a class:
  its bases and public methods too);
- images (matplotlib Figure, PIL Image, ``IPython.display.Image``): kind and size in
  pixels (``image_png`` turns them into PNG bytes for a vision model);
- anything else: the type and a cut repr.
"""

from __future__ import annotations

import inspect
import io
import reprlib
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

from timmy_magic.privacy.masking import Masker
from timmy_magic.text.markup import count

DEFAULT_MAX_CHARS = 2000
HEAD_ROWS = 5
MAX_COLUMNS = 30
_CUT = "… [{n:,} more characters]"


# ---------------------------------------------------------------- recognising types

def is_instance_of(value: object, module_prefix: str, *names: str) -> bool:
    """True when a class in ``type(value).__mro__`` is named one of ``names`` and lives in
    a module starting with ``module_prefix`` (``"pandas"``, ``"numpy"``...). Imports
    nothing."""
    for cls in type(value).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if cls.__name__ in names and (module == module_prefix
                                      or module.startswith(module_prefix + ".")):
            return True
    return False


def image_kind(value: object) -> str | None:
    """``"matplotlib"``, ``"pil"``, ``"ipython"`` for an image value, else None."""
    if is_instance_of(value, "matplotlib", "Figure"):
        return "matplotlib"
    if is_instance_of(value, "PIL", "Image"):
        return "pil"
    if is_instance_of(value, "IPython", "Image"):
        return "ipython"
    return None


# ---------------------------------------------------------------- safe text

def cut(text: str, max_chars: int) -> str:
    """``text`` if it fits, else its start and a marker saying how much was left out."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars - len(_CUT.format(n=len(text))))
    return text[:keep] + _CUT.format(n=len(text) - keep)


def safe_repr(value: object, max_chars: int = 300, masker: Masker | None = None) -> str:
    """``repr(value)`` masked (``masker``, else a fresh one), then cut to ``max_chars``;
    ``<repr failed: ...>`` if it raises."""
    masker = masker or Masker()
    try:
        text = repr(masker.shown(value))
    except Exception as exc:  # noqa: BLE001 - a user __repr__ may raise anything
        return f"<repr failed: {type(exc).__name__}: {_first_line(str_or_blank(exc))}>"
    if not isinstance(text, str):
        return "<repr failed: __repr__ returned a non-string>"
    return cut(masker.text(text), max_chars)


def str_or_blank(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - str() of an exception may itself raise
        return ""


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _attempt(fn: Callable[[], str], what: str) -> str:
    """One section of a summary: its text, or one line saying why it is missing."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the value's own library may raise anything
        return f"({what} failed: {type(exc).__name__}: {_first_line(str_or_blank(exc))})"


def type_name(value: object) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "")
    return cls.__qualname__ if module in ("builtins", None, "") else f"{module}.{cls.__qualname__}"


# ---------------------------------------------------------------- the summaries

def summarize(value: object, *, max_chars: int = DEFAULT_MAX_CHARS,
              masker: Masker | None = None) -> str:
    """A readable summary of ``value``, at most ``max_chars`` characters, masked by
    ``masker`` (else a fresh ``Masker``) before anything is cut. Never raises."""
    masker = masker or Masker()
    try:
        text = _summary(value, max_chars, masker)
    except Exception as exc:  # noqa: BLE001 - a summary must never break the cell
        text = f"{type_name(value)}: <summary failed: {type(exc).__name__}>"
    return cut(masker.text(text), max_chars)


def _summary(value: object, max_chars: int, m: Masker) -> str:
    if is_instance_of(value, "pandas", "DataFrame"):
        return _dataframe(value, m)
    if is_instance_of(value, "pandas", "Series"):
        return _series(value, m)
    if is_instance_of(value, "numpy", "ndarray"):
        return _ndarray(value, m)
    kind = image_kind(value)
    if kind is not None:
        return _image(value, kind)
    if isinstance(value, (str, bytes, bytearray)):
        return _text(m.value(value), max_chars, m)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return _container(value, max_chars, m)
    if isinstance(value, type):
        return _class(value)
    if callable(value) and isinstance(value, (types.FunctionType, types.BuiltinFunctionType,
                                              types.MethodType, types.BuiltinMethodType)):
        return _function(value)
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__} ({getattr(value, '__file__', None) or 'built-in'})"
    return f"{type_name(value)}: {safe_repr(value, max(80, max_chars - 60), m)}"


def _dataframe(df: Any, m: Masker) -> str:
    rows, cols = df.shape
    parts = [f"pandas DataFrame: {count(rows, 'row')} × {count(cols, 'column')}"]
    parts.append("dtypes:\n" + _attempt(lambda: _dtypes(df, m), "dtypes"))
    parts.append(f"head({HEAD_ROWS}):\n" + _attempt(
        lambda: m.frame(df.head(HEAD_ROWS)).to_string(max_cols=MAX_COLUMNS,
                                                        max_colwidth=40),
        "head"))
    numeric = _attempt(lambda: _describe_numeric(df, m), "describe")
    if numeric:
        parts.append("describe() of the numeric columns:\n" + numeric)
    return "\n".join(parts)


def _dtypes(df: Any, m: Masker) -> str:
    items = list(df.dtypes.items())
    lines = [f"  {m.text(str(name))}: {dtype}" for name, dtype in items[:MAX_COLUMNS]]
    if len(items) > MAX_COLUMNS:
        lines.append(f"  … {len(items) - MAX_COLUMNS} more columns")
    return "\n".join(lines)


def _describe_numeric(df: Any, m: Masker) -> str:
    numeric = df.select_dtypes(include="number")
    if numeric.shape[1] == 0 or numeric.shape[0] == 0:
        return ""
    described = m.frame(numeric.iloc[:, :MAX_COLUMNS].describe())
    return str(described.to_string(max_colwidth=20))


def _series(s: Any, m: Masker) -> str:
    parts = [f"pandas Series {m.text(repr(s.name))}: {len(s):,} values, dtype {s.dtype}"]
    parts.append(f"head({HEAD_ROWS}):\n" + _attempt(
        lambda: m.series(s.head(HEAD_ROWS)).to_string(max_rows=HEAD_ROWS), "head"))
    if _attempt(lambda: str(s.dtype.kind in "iufc" and len(s) > 0), "kind") == "True":
        parts.append("describe():\n" + _attempt(lambda: s.describe().to_string(), "describe"))
    return "\n".join(parts)


def _ndarray(a: Any, m: Masker) -> str:
    parts = [f"numpy ndarray: shape {tuple(a.shape)}, dtype {a.dtype}, {a.size:,} elements"]
    np = sys.modules.get("numpy")
    if np is not None:
        parts.append("values:\n" + _attempt(
            lambda: str(np.array2string(_masked_array(a, m, np), threshold=20, edgeitems=3,
                                        max_line_width=100)),
            "values"))
    if a.dtype.kind in "iuf" and a.size > 0:
        parts.append(_attempt(
            lambda: f"min {a.min()}, max {a.max()}, mean {a.mean():.6g}", "statistics"))
    return "\n".join(parts)


def _masked_array(a: Any, m: Masker, np: Any) -> Any:
    """Numbers as they are; text and objects masked (a large one: its first values)."""
    if a.dtype.kind not in "USOV":
        return a
    flat = a.ravel()
    shown = flat if flat.size <= 1000 else flat[:1000]
    masked = np.empty(shown.size, dtype=object)
    for i, v in enumerate(shown.tolist()):
        masked[i] = m.shown(v)
    return masked.reshape(a.shape) if flat.size <= 1000 else masked


def _text(value: str | bytes | bytearray, max_chars: int, m: Masker) -> str:
    kind = type(value).__name__
    unit = "character" if isinstance(value, str) else "byte"
    head = f"{kind} of {count(len(value), unit)}"
    body = value if isinstance(value, str) else safe_repr(value, max_chars, m)
    if len(head) + 2 + len(body) <= max_chars:
        return f"{head}:\n{body}"
    keep = max(0, max_chars - len(head) - 40)
    return f"{head} (first {keep:,} shown):\n{body[:keep]}…"


def _container(value: dict[Any, Any] | list[Any] | tuple[Any, ...] | set[Any]
               | frozenset[Any], max_chars: int, m: Masker) -> str:
    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 20, 20, 20, 20
    r.maxfrozenset, r.maxstring, r.maxother = 20, 80, 80
    noun = "key" if isinstance(value, dict) else "item"
    head = f"{type_name(value)} of {count(len(value), noun)}"
    try:
        body = m.text(r.repr(m.shown(value)))
    except Exception as exc:  # noqa: BLE001 - a key's __hash__/__eq__ or an item's repr may raise
        body = f"<repr failed: {type(exc).__name__}: {_first_line(str_or_blank(exc))}>"
    return f"{head}: {cut(body, max(80, max_chars - len(head) - 2))}"


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc_line(obj: Any) -> str:
    doc = _first_line(inspect.getdoc(obj))
    return f"\n  {doc}" if doc else ""


def _function(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "?")
    module = getattr(fn, "__module__", None)
    where = f" (module {module})" if module and module != "__main__" else ""
    return f"function {name}{_signature(fn)}{where}{_doc_line(fn)}"


def _class(cls: type) -> str:
    bases = ", ".join(b.__qualname__ for b in cls.__bases__ if b is not object)
    init = _signature(cls)
    methods = [n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)]
    shown = ", ".join(methods[:12]) + (", …" if len(methods) > 12 else "")
    text = f"class {cls.__qualname__}" + (f"({bases})" if bases else "") + f", called as {init}"
    return text + _doc_line(cls) + (f"\n  methods: {shown}" if methods else "")


# ---------------------------------------------------------------- images

def _image(value: Any, kind: str) -> str:
    size = _attempt(lambda: "{} × {} px".format(*image_size(value, kind)), "size")
    label = {"matplotlib": "matplotlib Figure", "pil": "PIL Image",
             "ipython": "IPython.display.Image"}[kind]
    return f"{label}, {size}"


def image_size(value: Any, kind: str) -> tuple[int, int]:
    """Width and height in pixels (a Figure: at its dpi, as ``savefig`` would draw it)."""
    if kind == "matplotlib":
        w, h = value.get_size_inches() * value.dpi
        return round(w), round(h)
    if kind == "pil":
        return int(value.size[0]), int(value.size[1])
    size = png_size(value.data or b"")
    if size is None:
        raise ValueError("size unknown")
    return size


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header, None for anything else."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    return None


IMAGE_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg",
               "gif": "image/gif", "webp": "image/webp"}


def image_bytes(value: Any, kind: str) -> tuple[bytes, str]:
    """The image as (bytes, mime): PNG for a Figure and a PIL image; an
    ``IPython.display.Image`` as it holds its data. ValueError when there is none (an
    Image that only links to a URL) or its format is not one vision models take."""
    if kind == "matplotlib":
        buf = io.BytesIO()
        value.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue(), "image/png"
    if kind == "pil":
        img = value if value.mode in ("RGB", "RGBA", "L", "LA", "P", "1") else value.convert("RGBA")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    data, fmt = value.data, str(getattr(value, "format", "") or "").lower()
    if not isinstance(data, bytes) or not data:
        raise ValueError("the Image holds no data (a URL only?)")
    if fmt not in IMAGE_MIMES:
        raise ValueError(f"image format {fmt or 'unknown'!r} is not png, jpeg, gif or webp")
    return data, IMAGE_MIMES[fmt]
