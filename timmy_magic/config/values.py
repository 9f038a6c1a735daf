"""The field types of providers.yaml: the one validation boundary for its values.

Numbers are finite, of their type (never a bool or quoted text) and within sane bounds;
URLs are parsed (http/https, a host, a valid port, no whitespace, control characters or
fragment); header names and values, stop strings and extra body ``params`` are checked
here. Each check raises ``ValueError`` with a message that reads after the field's name
("must be from 0 to 2"); ``errors.one_line`` turns it into a ``ConfigError``. A wrong
type is a ``ValueError`` too: pydantic reports only that (and AssertionError) as a
validation error; a ``TypeError`` would escape as a traceback.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, PlainValidator, SecretStr

from timmy_magic.text.markup import shorten

DAY = 86_400.0
TRUE_WORDS, FALSE_WORDS = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
"""How an expanded ``${VAR}`` may spell a flag."""


class Expanded(str):
    """A string that came out of ``${VAR}`` expansion. Environment variables are text, so
    only these may be read as a number or a flag (``local_only: ${X:-false}``); text the
    file itself quotes may not (``enabled: "yes"``, ``priority: "3"``)."""


# ------------------------------------------------------------------ numbers and flags


def number(lo: float, hi: float, *, integer: bool = False, unit: str = "",
           optional: bool = False) -> PlainValidator:
    """A finite number in [lo, hi]: never a bool, never quoted text."""
    what = "an integer" if integer else "a number"
    bounds = f"must be from {lo:g} to {hi:g}{unit}"

    def check(value: object) -> int | float | None:
        if value is None and optional:
            return None
        if isinstance(value, Expanded):
            value = _read_number(value, integer)
        if isinstance(value, bool):
            raise ValueError(f"must be {what}, not true/false")
        if isinstance(value, str):
            raise ValueError(f"must be {what}, not text{_text_hint(value)}")
        if not isinstance(value, int) and (integer or not isinstance(value, float)):
            raise ValueError(f"must be {what}, not {KINDS.get(type(value), 'that')}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number {bounds.removeprefix('must be ')}")
        if not lo <= value <= hi:
            raise ValueError(bounds)
        return value if integer else float(value)

    return PlainValidator(check)


KINDS = {list: "a list", dict: "a mapping", type(None): "null", float: "a fraction"}
"""How a message names the type of a wrong value."""


def _read_number(text: str, integer: bool) -> object:
    try:
        return int(text) if integer or text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        return str(text)


def _text_hint(text: str) -> str:
    try:
        float(text)
    except ValueError:
        return ""
    if "e" in text.lower() and "." not in text:
        return " (YAML reads an exponent without a dot as text: write 1.0e+3, not 1e3)"
    return " (remove the quotes)"


def flag(value: object) -> bool:
    if isinstance(value, Expanded) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


# ------------------------------------------------------------------ text


def _no_control(text: str) -> str:
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (has {bad!r})")
    return text


def _single_word(text: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must not contain spaces or control characters")
    return text


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


def http_url(url: str) -> str:
    if len(url) > 2048:
        raise ValueError("is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if any(c.isspace() or not c.isprintable() for c in url):  # urlsplit drops CR/LF/tab
        raise ValueError("must be a URL without spaces or control characters")
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host (http://HOST:PORT/...)")
    if port == 0:
        raise ValueError("has port 0")
    if "#" in url:
        raise ValueError("must not have a #fragment")
    return url


def clean_api_key(key: SecretStr | None) -> SecretStr | None:
    if key is None:
        return None
    value = key.get_secret_value().strip()
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")
    return SecretStr(value) if value else None


def header_name(name: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}", name):
        raise ValueError("is not a valid HTTP header name")
    return name


def header_value(value: str) -> str:
    if len(value) > 8192 or any(c in "\r\n\0" or (ord(c) < 32 and c != "\t") for c in value):
        raise ValueError("must be one line of at most 8192 characters, no control characters")
    return value


def env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError("is not an environment variable name")
    return name


def callable_path(path: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", path):
        raise ValueError("must be 'package.module:function'")
    return path


def api_mode(value: object) -> str:
    if isinstance(value, str) and value.strip() in ("chat", "completion"):
        return value.strip()
    raise ValueError("must be chat or completion")


def shown_input(value: object) -> str:
    """A wrong value as a message may quote it: its repr, at most 120 characters."""
    return shorten(repr(str(value) if isinstance(value, Expanded) else value), 120)


# ------------------------------------------------------------------ request extras

MAX_STOPS = 16


def stop_strings(value: object) -> tuple[str, ...]:
    """One stop string or a list of them: each 1 to 64 characters, no NUL (newlines are
    allowed: "\n\n" is the usual stop of a base model)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_STOPS:
        raise ValueError(f"must be a string or a list of 1 to {MAX_STOPS} strings")
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= 64 or "\0" in item:
            raise ValueError(f"must hold strings of 1 to 64 characters without NUL (got "
                             f"{shown_input(item)})")
    return tuple(str(i) for i in items)


_PARAM_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_OWN_FIELD = {"temperature", "stop", "max_tokens", "max_completion_tokens"}
_ROUTER_SET = {"model", "prompt", "messages", "stream", "stream_options", "n"}
MAX_PARAMS = 32


def _param_value(key: str, value: object) -> Any:
    if isinstance(value, Expanded):
        value = _read_number(value, False)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 1e15:
            raise ValueError(f"'{key}' must be a finite number (got {value!r})")
        return value
    if isinstance(value, str):
        if len(value) > 4096 or "\0" in value:
            raise ValueError(f"'{key}' must be text of at most 4096 characters, no NUL")
        return str(value)
    raise ValueError(f"'{key}' must be a number, text, true/false, null or a list of "
                     f"them, not {KINDS.get(type(value), type(value).__name__)}")


def body_params(value: object) -> dict[str, Any]:
    """Extra fields for the request body of an OpenAI-compatible server, as the server
    names them (llama-server ``repeat_penalty``, vLLM ``repetition_penalty``, ``top_k``,
    ``min_p``, ``seed``...): JSON scalars or short lists of them, nothing nested."""
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of body fields (repeat_penalty: 1.1, ...)")
    if len(value) > MAX_PARAMS:
        raise ValueError(f"has more than {MAX_PARAMS} fields")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _PARAM_KEY.fullmatch(key):
            raise ValueError(f"{shown_input(key)} is not a field name (letters, digits, _)")
        if key in _OWN_FIELD:
            raise ValueError(f"'{key}' has its own field: set {key} on the model instead")
        if key in _ROUTER_SET:
            raise ValueError(f"'{key}' is set by the router, not by params")
        if isinstance(item, list):
            if len(item) > 64:
                raise ValueError(f"'{key}' is a list of more than 64 items")
            out[key] = [_param_value(key, i) for i in item]
        else:
            out[key] = _param_value(key, item)
    return out


# ------------------------------------------------------------------ field types

Seconds = Annotated[float, number(0.01, DAY, unit=" seconds")]
Delay = Annotated[float, number(0, DAY, unit=" seconds")]
Flag = Annotated[bool, PlainValidator(flag)]
Url = Annotated[str, AfterValidator(http_url)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_control)]
Word = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_single_word)]
Tokens = Annotated[int | None, number(1, 100_000_000, integer=True, optional=True)]
Price = Annotated[float, number(0, 10_000, unit=" USD per 1k tokens")]
Arg = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]
