"""The one masking step for everything that leaves the kernel as prompt or context.

A ``Masker`` replaces secrets with ``***``. It works on **raw values**, before anything
is summarised, cut, escaped or rendered (``Masker.value``: strings, bytes, containers,
dict keys and values, and the rows of a DataFrame or Series that a summary shows), and on
text (``Masker.text``). A cut made after masking can only cut a mask, never leave a part
of a secret: that is the whole design, and why no feature masks its own output.

Masked:

- every value registered with ``secrets.REDACT`` (each configured key, header and URL
  secret, with its encodings);
- values of environment variables whose names say secret (``secrets.is_secret_name``:
  ``OPENAI_API_KEY``, ``GH_TOKEN``, ``MYSQL_PWD``, ``DB_PASS``, ``NPM_AUTH``...);
- secrets passed in (``extra``);
- each of those also in the escaped forms ``repr()`` and JSON give it (a backslash
  doubled, a quote escaped), so a value shown inside a container's repr is caught;
- what plainly is a credential (``secrets.find_credentials``: ``sk-``, GitHub, Hugging
  Face, AWS, Slack keys, JWTs, private-key PEM blocks, Bearer/Basic, URL passwords);
- the value under a key, attribute, column or series named like a secret (``password``,
  ``api_key``, ``token``...), and a quoted literal assigned to such a name in code
  (``password = "hunter2"``).

Not masked: a secret under ``MIN_SECRET`` (4) characters (masking it would rewrite
ordinary words, and it protects nothing); ``name=value`` in code when the value is a
name, not a literal (``api_key=key`` is an argument); images (pixels cannot be masked).

Every ``ChatRequest`` masks its messages' text with ``Masker.text`` when it is made, so
no path can send a whole secret even if it forgot the context step; the context step is
what keeps *parts* of secrets from surviving a summary's cut.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from timmy_magic.privacy import redact as _secrets

MASK = _secrets.HIDDEN
MIN_SECRET = _secrets.MIN_SECRET
SHOWN_ITEMS = 64
"""Items of a long container masked before it is summarised: more than any summary shows
(``reprlib`` shows 20), so the rest is never read."""
MAX_DEPTH = 6
_T = TypeVar("_T")
_NOT_SECRET_VALUES = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off",
                                "0", "1", ""})
_SECRET_LITERAL = re.compile(
    r"(?P<name>\b[\w.-]*?" + _secrets.SECRET_WORDS + r")\b(?P<sep>[\"']?\s*[:=]\s*)"
    r"(?P<q>[\"'])(?P<value>[^\"'\n]{" + str(MIN_SECRET) + r",})(?P=q)",
    re.IGNORECASE)
"""A quoted literal assigned to a secret-named name or key, in code or in a repr:
``password = "hunter2"``, ``{'api_key': 'abc123'}``."""


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values (>= ``MIN_SECRET`` characters, not a bare ``true``/``0``...) of environment
    variables whose names say secret."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items()
            if _secrets.is_secret_name(k) and len(v) >= MIN_SECRET
            and v.strip().lower() not in _NOT_SECRET_VALUES]


def _escaped_forms(secret: str) -> set[str]:
    """``secret`` as ``repr()`` and JSON show it inside a string (without the quotes)."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1]}
    return {f for f in forms if len(f) >= MIN_SECRET}


_PATTERNS: dict[frozenset[str], re.Pattern[str] | None] = {}
_PATTERNS_LOCK = threading.Lock()


def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One compiled alternation of every form of ``secrets``, longest first (cached: the
    same secrets come back for every request)."""
    found = _PATTERNS.get(secrets, False)
    if found is not False:
        return found  # type: ignore[return-value]
    forms: set[str] = set()
    for s in secrets:
        forms |= _escaped_forms(s)
    pattern = (re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))
               if forms else None)
    with _PATTERNS_LOCK:
        if len(_PATTERNS) > 64:
            _PATTERNS.clear()
        _PATTERNS[secrets] = pattern
    return pattern


class Masker:
    """Masks secrets in text and raw values; ``count`` says how many it replaced."""

    def __init__(self, extra: Iterable[str] = (), *,
                 environ: Mapping[str, str] | None = None) -> None:
        secrets = {s for s in extra if s and len(s) >= MIN_SECRET}
        secrets.update(s for s in _secrets.REDACT.registered() if len(s) >= MIN_SECRET)
        secrets.update(secret_env_values(environ))
        self._pattern = _pattern(frozenset(secrets))
        self.count = 0

    # -- text

    def text(self, text: str) -> str:
        """``text`` with every known secret (and its escaped forms), every plain
        credential and every quoted literal under a secret name replaced by ``***``."""
        if self._pattern is not None:
            text, n = self._pattern.subn(MASK, text)
            self.count += n
        text, n = _secrets.find_credentials(text, MASK)
        self.count += n
        if _secrets.may_name_secret(text):
            text, n = _SECRET_LITERAL.subn(_masked_literal, text)
            self.count += n
        return text

    # -- raw values

    def value(self, value: _T) -> _T:
        """A copy of ``value`` with every string in it masked: str and bytes, the keys and
        items of dicts, lists, tuples, sets (the first ``SHOWN_ITEMS``), the fields of a
        dataclass; the value under a secret-named key or field replaced whole. Numbers,
        None and other objects come back as they are. Never raises."""
        return cast(_T, self._safe(value, shown=False))

    def shown(self, value: object) -> object:
        """``value`` ready to be summarised: as ``value`` does, and every other object
        (at any depth) replaced by a stand-in whose repr and str are its own, masked, so
        that a cut ``reprlib`` or pandas makes later cuts only masked text."""
        return self._safe(value, shown=True)

    def named(self, name: str, value: _T) -> _T:
        """``value`` as it may be shown under ``name``: ``***`` when the name says
        secret (``password``, ``cfg.api_key``, ``d['token']``) and the value is a string
        or a number, else ``value`` itself."""
        last = re.split(r"[.\[\]'\"]+", name.strip("]'\" "))[-1] if name else name
        if _secrets.is_secret_name(last) and _scalar(value):
            self.count += 1
            return MASK  # type: ignore[return-value]
        return value

    def _safe(self, value: Any, shown: bool) -> Any:
        try:
            return self._value(value, 0, shown)
        except Exception:  # noqa: BLE001 - a hostile __eq__/__hash__/__iter__ may raise
            return _Shown("<not shown: it could not be masked>")

    def _value(self, value: Any, depth: int, shown: bool) -> Any:
        if value is None or isinstance(value, (bool, int, float, complex)):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (bytes, bytearray)):
            return type(value)(self.text(value.decode("utf-8", "surrogateescape"))
                               .encode("utf-8", "surrogateescape"))
        if depth >= MAX_DEPTH:
            return _Shown("...") if shown else value
        if isinstance(value, Mapping):
            return {self._value(k, depth + 1, shown): self._secret_or(k, v, depth, shown)
                    for k, v in _first(value.items())}
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            items = [self._secret_or(f, v, depth, shown)
                     for f, v in zip(value._fields, value)]
            return cast(Any, type(value))(*items)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self._value(v, depth + 1, shown) for v in _first(value)]
            kind = next(t for t in (list, tuple, set, frozenset) if isinstance(value, t))
            return kind(items) if kind in (list, tuple) else _Shown(
                _set_repr(kind, [repr(i) for i in items], len(value)))
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and not shown:
            return self._dataclass(value, depth)
        if shown:
            return _Shown(self.text(_repr(value)))
        return value

    def _secret_or(self, key: object, value: object, depth: int, shown: bool) -> object:
        if isinstance(key, str) and _secrets.is_secret_name(key) and _scalar(value):
            self.count += 1
            return MASK
        return self._value(value, depth + 1, shown)

    def _dataclass(self, value: Any, depth: int) -> Any:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = self._secret_or(f.name, old, depth, False)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value

    def frame(self, df: Any) -> Any:
        """A pandas DataFrame (a few rows: what a summary shows) with its column names
        and cells masked, a secret-named column masked whole."""
        out = df.copy()
        names = [str(c) for c in out.columns]
        for c, name in zip(list(out.columns), names):
            if _secrets.is_secret_name(name):
                self.count += int(out[c].notna().sum())
                out[c] = MASK
            elif _textual(out[c]):
                out[c] = out[c].astype(object).map(lambda v: self._value(v, 1, True))
        out.columns = [self.text(n) for n in names]
        out.index = [self._value(i, 1, True) for i in out.index]
        return out

    def series(self, s: Any) -> Any:
        """A pandas Series (a few values) masked as ``frame`` masks a column."""
        if _secrets.is_secret_name(str(s.name)):
            self.count += int(s.notna().sum())
            return s.map(lambda _: MASK)
        return s.astype(object).map(lambda v: self._value(v, 1, True)) if _textual(s) else s


def _textual(column: Any) -> bool:
    """Anything but numbers, booleans and times may hold text (object, ``str``, string,
    categorical columns)."""
    return getattr(column.dtype, "kind", "O") not in "biufcmM"


class _Shown:
    """A stand-in for an object in a summary: its masked text as both repr and str."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text

    __str__ = __repr__


def _repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a user __repr__ may raise anything
        try:
            why = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        except Exception:  # noqa: BLE001 - str() of the exception may raise too
            why = ""
        return f"<repr failed: {type(exc).__name__}{': ' + why if why else ''}>"
    return text if isinstance(text, str) else "<repr failed: __repr__ returned a non-string>"


def _set_repr(kind: type, items: list[str], n: int) -> str:
    more = ", ..." if n > len(items) else ""
    if not items:
        return f"{kind.__name__}()"
    body = "{" + ", ".join(items) + more + "}"
    return body if kind is set else f"frozenset({body})"


def _masked_literal(m: re.Match[str]) -> str:
    if m.group("value").strip().lower() in _NOT_SECRET_VALUES or m.group("value") == MASK:
        return m.group()
    return f"{m.group('name')}{m.group('sep')}{m.group('q')}{MASK}{m.group('q')}"


def _scalar(value: object) -> bool:
    return isinstance(value, (str, bytes, bytearray, int, float)) and value not in ("", b"")


def _first(items: Iterable[_T]) -> list[_T]:
    out = []
    for i, item in enumerate(items):
        if i >= SHOWN_ITEMS:
            break
        out.append(item)
    return out


# ---------------------------------------------------------------- one-call forms

def mask_secrets(text: str, extra_secrets: Iterable[str] = (), *,
                 environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``text`` with every secret replaced by ``***``, and how many were replaced."""
    masker = Masker(extra_secrets, environ=environ)
    return masker.text(text), masker.count


def mask_item(item: _T, extra_secrets: Sequence[str] = (), *,
              environ: Mapping[str, str] | None = None) -> tuple[_T, int]:
    """An item (or any dataclass, string or tuple) with every string field masked. The
    count is of the text sent (a secret in both ``text`` and ``source`` counts once)."""
    masker = Masker(extra_secrets, environ=environ)
    masked = masker.value(item)
    text = getattr(item, "text", item if isinstance(item, str) else "")
    return masked, mask_secrets(text, extra_secrets, environ=environ)[1]
