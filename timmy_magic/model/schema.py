"""Structured output: a schema the answer must match, sent with each server's own
constrained decoding and checked in the kernel.

A ``Schema`` is made once from what the user gives (``Schema.of``): a pydantic model class,
any type pydantic can validate (``list[City]``, a dataclass, a ``TypedDict``), or a
JSON-schema dict. It carries the JSON Schema the servers get (``json``), the name they want
with it, whether OpenAI's ``strict`` mode can take it, and the validator that turns the
answer's text into ``data`` (a model instance, or plain JSON values for a dict schema) or
says in one line why not (``InvalidAnswer``, "invalid JSON: ...").

Pure: no I/O. The cascade (``cascade.py``) validates each answer and asks again once with
the error (``retry_request``); the adapters put ``json`` in their dialect's field.

**Why two validators.** A pydantic class validates with pydantic (its instance is what the
user wants back). A JSON-schema dict validates with ``jsonschema`` (the reference
implementation of the JSON Schema spec): converting a dict schema to a pydantic model
would lose keywords pydantic does not model. ``jsonschema`` is imported only when a dict
schema is first used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timmy_magic.model.errors import InvalidRequest, TimmyError
from timmy_magic.text.formats import fenced_block
from timmy_magic.text.markup import shorten

MAX_ERRORS_SHOWN = 3
"""Validation errors named in the one-line message (then "and N more")."""
RETRY_ANSWER_CHARS = 4_000
"""Longest invalid answer fed back with the retry (the error names what is wrong)."""
INVALID_PREFIX = "invalid JSON:"
"""How every ``InvalidAnswer`` message starts (the trace and the answer's tail show it)."""
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


class InvalidAnswer(TimmyError, ValueError):
    """The answer is not JSON, or not JSON the schema accepts. One line, starting
    ``invalid JSON:``, naming the first few errors by their path. A TimmyError, so its
    message (which may quote what the server sent) passes the one redaction point."""


@dataclass(frozen=True, eq=False)
class Schema:
    """What the answer must be. ``json`` is what servers get; ``validate`` checks text."""

    name: str
    """A name for the schema, as OpenAI's ``json_schema.name`` and Anthropic's tool want it
    (letters, digits, ``_`` and ``-``, at most 64)."""
    json: Mapping[str, Any]
    """The JSON Schema (a pydantic class's ``model_json_schema()``, or the dict as given)."""
    source: Any = field(repr=False)
    """What the user gave: ``data`` is an instance of it (a class), or JSON values (a dict)."""
    _check: Any = field(repr=False)
    """pydantic ``TypeAdapter`` or a ``jsonschema`` validator."""
    strict: bool = False
    """Can OpenAI's ``strict: true`` take this schema as it is (every object closed, with
    every property required)? Then it is sent strict; otherwise not, and the kernel's
    validation is what holds the answer to it."""

    @classmethod
    def of(cls, spec: Any, name: str | None = None) -> Schema:
        """A Schema from a pydantic model class, a type pydantic validates, a JSON-schema
        dict, or a Schema (returned as is). InvalidRequest, one line, for anything else or
        a dict that is not a valid JSON Schema."""
        if isinstance(spec, Schema):
            return spec
        if isinstance(spec, Mapping):
            return cls._of_dict(spec, name)
        if isinstance(spec, (str, bytes, int, float, bool, Sequence)) or spec is None:
            raise InvalidRequest(f"a schema is a pydantic model class, a type or a JSON-schema "
                                 f"dict, not {type(spec).__name__}")
        try:
            from pydantic import TypeAdapter

            adapter: Any = TypeAdapter(spec)
            schema = adapter.json_schema()
        except Exception as exc:  # pydantic's errors for unschemable types vary  # noqa: BLE001
            raise InvalidRequest(f"cannot make a JSON schema of {_shown(spec)}: "
                                 f"{_exception_line(exc)}") from None
        return cls(_name(name or getattr(spec, "__name__", None) or schema.get("title")),
                   schema, spec, adapter, _strict_ok(schema))

    @classmethod
    def _of_dict(cls, spec: Mapping[str, Any], name: str | None) -> Schema:
        try:
            schema = json.loads(json.dumps(spec, allow_nan=False))  # a plain JSON copy
        except RecursionError:
            raise InvalidRequest("the schema dict is nested too deeply") from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"the schema dict is not JSON: {exc}") from None
        if not isinstance(schema, dict):  # pragma: no cover - a Mapping dumps to an object
            raise InvalidRequest("a JSON schema is an object")
        from jsonschema import exceptions, validators

        try:
            kind = validators.validator_for(schema)
            kind.check_schema(schema)
            strict = _strict_ok(schema)
        except exceptions.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "the top level"
            raise InvalidRequest(f"not a valid JSON schema at {where}: "
                                 f"{shorten(exc.message, 200)}") from None
        except RecursionError:
            raise InvalidRequest("the schema dict is nested too deeply") from None
        return cls(_name(name or schema.get("title")), schema, spec, kind(schema), strict)

    # ------------------------------------------------------------ what servers get

    def response_format(self) -> dict[str, Any]:
        """The OpenAI ``response_format`` field (chat completions and batch lines alike)."""
        return {"type": "json_schema", "json_schema": {
            "name": self.name, "schema": self.json, "strict": self.strict}}

    def instruction(self) -> str:
        """The schema in words, for the system prompt: servers without constrained
        decoding (and small models with it) answer better when told."""
        return ("Answer with only a JSON value (no prose, no code fence) that matches this "
                f"JSON Schema:\n{json.dumps(self.json, separators=(',', ':'))}")

    # ------------------------------------------------------------ the answer

    def validate(self, text: str) -> Any:
        """The answer's data, or InvalidAnswer saying in one line why not. Nothing else
        escapes: the text comes from a server (JSON nested past the recursion limit), and
        the schema may be the user's pydantic class, whose validators may raise anything."""
        try:
            return self._validate(text)
        except InvalidAnswer:
            raise
        except RecursionError:
            raise InvalidAnswer(f"{INVALID_PREFIX} nested too deeply to check") from None
        except Exception as exc:  # a user's validator, a jsonschema format checker...  # noqa: BLE001
            raise InvalidAnswer(f"{INVALID_PREFIX} checking it raised {type(exc).__name__}: "
                                f"{_exception_line(exc)}") from None

    def _validate(self, text: str) -> Any:
        try:
            value = parse_json(_LONE_ESCAPE.sub(_mend_escape, text), strict=True)
        except JSONAnswerError as exc:
            raise InvalidAnswer(f"{INVALID_PREFIX} {str(exc).removeprefix('the answer is ')}"
                                ) from None
        check = self._check
        if hasattr(check, "validate_python"):
            from pydantic import ValidationError

            try:
                return check.validate_python(value)
            except ValidationError as exc:
                found = [(_path(e.get("loc", ())), str(e.get("msg", ""))) for e in exc.errors()]
                raise InvalidAnswer(_message(found)) from None
        errors = sorted(check.iter_errors(value), key=lambda e: list(map(str, e.path)))
        if errors:
            raise InvalidAnswer(_message([(_path(e.path), e.message) for e in errors]))
        return value

    def canonical(self) -> dict[str, Any]:
        """What decides the answer (the cache key's ``schema``): the name and the schema."""
        return {"name": self.name, "schema": self.json}


# ---------------------------------------------------------------- JSON answers

class JSONAnswerError(TimmyError, ValueError):
    """The answer is not JSON; the message is one line."""


def _no_constant(name: str) -> Any:
    raise JSONAnswerError(f"the answer is not valid JSON: {name} is not a JSON number")


def parse_json(text: str, strict: bool = False) -> Any:
    """Parse the answer as JSON (a ```json block if present, else the first fenced block,
    else the whole text). Raises JSONAnswerError with a one-line reason. ``strict``:
    ``NaN`` and ``Infinity`` (which Python's json takes) are not JSON either."""
    body = fenced_block(text, "json")
    if body is None:
        body = fenced_block(text)
    body = (body if body is not None else text).strip()
    if not body:
        raise JSONAnswerError("the answer is not JSON: it is empty")
    try:
        return json.loads(body, parse_constant=_no_constant) if strict else json.loads(body)
    except json.JSONDecodeError as exc:
        raise JSONAnswerError(f"the answer is not valid JSON: {exc.msg} at line {exc.lineno}"
                              f" column {exc.colno}") from None


# ---------------------------------------------------------------- helpers

_LONE_ESCAPE = re.compile(r"(\\\\)|(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                          r"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""In JSON text: an escaped backslash, a surrogate pair (both kept), or a lone surrogate
escape (``\\ud800``): json.loads would decode that into a lone surrogate in the data,
which cannot be encoded, sent to the front end or written out. The wire already
replaced raw lone surrogates in the text; this replaces the escaped ones, with U+FFFD."""


def _mend_escape(m: re.Match[str]) -> str:
    return m.group() if m.group(1) or m.group(2) else "\\ufffd"



def _message(found: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{where}: {shorten(msg, 160)}" if where else shorten(msg, 160)
                      for where, msg in found[:MAX_ERRORS_SHOWN])
    more = len(found) - MAX_ERRORS_SHOWN
    return f"{INVALID_PREFIX} {shown}" + (f" (and {more} more)" if more > 0 else "")


def _path(loc: Any) -> str:
    """``a.0.b``; a path a few hundred levels deep keeps its ends (``a.0.a.0…(396 more)…b``)
    so the message stays one short line."""
    parts = [str(p) for p in loc]
    if len(parts) > 12:
        parts = [*parts[:6], f"…({len(parts) - 10} more)…", *parts[-4:]]
    return shorten(".".join(parts), 120)


def _exception_line(exc: BaseException) -> str:
    return shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)


def _shown(spec: Any) -> str:
    return getattr(spec, "__name__", None) or shorten(repr(spec), 60)


def _name(raw: Any) -> str:
    name = _NAME.sub("_", str(raw or "")).strip("_")[:64]
    return name or "answer"


def _strict_ok(node: Any) -> bool:
    """Every object closed (``additionalProperties: false``) with all its properties
    required, all the way down (OpenAI's rule for ``strict: true``)."""
    if isinstance(node, list):
        return all(_strict_ok(n) for n in node)
    if not isinstance(node, dict):
        return True
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties", {})
        if node.get("additionalProperties") is not False:
            return False
        if not isinstance(props, dict) or set(node.get("required", ())) != set(props):
            return False
    return all(_strict_ok(v) for k, v in node.items() if k not in ("enum", "const",
                                                                    "default", "examples"))
