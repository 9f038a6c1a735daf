"""How an answer is scored, in [0, 1]: ``exact:FIELD``, ``contains:FIELD``,
``regex:PATTERN``, ``json``, a callable ``(row, result) -> float``, or a ``Judge`` (another
model grades it: ``judge("provider[:model]", rubric)``).

Texts are compared normalised (``normalise``): case folded, runs of white space made one
space, and white space and punctuation stripped at both ends, so a completion's
``" Paris."`` matches the label ``Paris``. With a schema, ``exact``/``contains`` compare
the field of the answer's data when it has one (``{"answer": ...}``), else its text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from timmy_magic.evals.targets import EvalError, Target
from timmy_magic.model.chat import ChatRequest, Message, Result
from timmy_magic.model.errors import TimmyError
from timmy_magic.model.schema import Schema
from timmy_magic.model.values import NotShowable, jsonable
from timmy_magic.text.markup import shorten

_EDGES = " \t\r\n.,;:!?\"'`()[]{}<>*_"


class ScoreError(TimmyError):
    """One row's score could not be given (kept as that row's error, nothing stops)."""


def normalise(value: Any) -> str:
    """``value`` as compared: case folded, one space between words, no punctuation or
    white space at either end."""
    return " ".join(str(value).casefold().split()).strip(_EDGES)


@dataclass(frozen=True)
class Judge:
    """Another model grades each answer against ``rubric``: it is asked for JSON
    ``{"score": 0..1, "reason": "..."}`` (its cost is counted apart)."""

    target: Target
    rubric: str
    max_tokens: int = 200

    @property
    def name(self) -> str:
        return f"judge:{self.target.label}"

    def request(self, row: Mapping[str, Any], asked: str, answer: str) -> ChatRequest:
        """The grading request for one answer (pinned to the judge's target)."""
        fields = json.dumps({k: _short(v) for k, v in row.items() if k != "row"},
                            ensure_ascii=False, default=str)
        user = (f"Rubric:\n{self.rubric}\n\nThe row (its fields):\n{fields}\n\n"
                f"The prompt the model was asked:\n{asked}\n\nThe model's answer:\n{answer}")
        return ChatRequest((Message("system", JUDGE_SYSTEM), Message("user", user)),
                           self.target.model, 0.0, self.max_tokens, self.target.provider,
                           Schema.of(JUDGE_SCHEMA))

    @staticmethod
    def grade(result: Result) -> tuple[float, str]:
        """(score, reason) from the judge's answer, or ScoreError."""
        if not result.ok:
            raise ScoreError(f"judge: {result.error}")
        data = result.data if isinstance(result.data, Mapping) else None
        value = data.get("score") if data is not None else None
        reason = data.get("reason") if data is not None else None
        return _unit(value, "judge"), str(reason or "")


JUDGE_SYSTEM = ("You grade one answer of a model against a rubric. Read the rubric, the "
                "row, the prompt and the answer, then reply with JSON only: "
                '{"score": a number from 0 (fails the rubric) to 1 (meets it fully), '
                '"reason": one short sentence}.')
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                   "reason": {"type": "string"}},
    "required": ["score"],
}


def judge(target: Any, rubric: str, *, max_tokens: int = 200) -> Judge:
    """A score that asks ``target`` (``"provider[:model]"`` or a tuple) to grade each
    answer against ``rubric`` (``evaluate(..., score=judge("openai:gpt-4o-mini", "..."))``)."""
    if not isinstance(rubric, str) or not rubric.strip():
        raise EvalError("judge: the rubric is empty: say what a good answer is")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise EvalError(f"judge: max_tokens must be at least 1, not {max_tokens!r}")
    return Judge(Target.of(target), rubric.strip(), max_tokens)


# ---------------------------------------------------------------- scoring without a model


@dataclass(frozen=True)
class Scoring:
    """A score that needs no model: ``name`` as written, ``field`` the row field it reads
    (checked before anything is sent), ``fn(row, result)`` the score or ScoreError."""

    name: str
    fn: Callable[[Mapping[str, Any], Any, Result], float]
    field: str | None = None

    def __call__(self, fields: Mapping[str, Any], row: Any, result: Result) -> float:
        return self.fn(fields, row, result)


def scoring_of(spec: Any, schema: Schema | None) -> Scoring | Judge | None:
    """The score ``spec`` names, or an EvalError saying which are known."""
    if spec is None or isinstance(spec, Judge):
        return spec
    if callable(spec) and not isinstance(spec, str):
        return Scoring(getattr(spec, "__name__", "score"), _call(spec))
    if not isinstance(spec, str):
        raise EvalError(f"evaluate: score must be a string, a callable or judge(...), not "
                        f"{type(spec).__name__}")
    kind, sep, arg = spec.partition(":")
    kind = kind.strip()
    if kind == "json" and not sep:
        return Scoring("json", _json(schema))
    if kind in ("exact", "contains") and arg.strip():
        field = arg.strip()
        return Scoring(f"{kind}:{field}", _compare(field, kind == "exact"), field)
    if kind == "regex" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise EvalError(f"evaluate: score {spec!r}: not a regular expression "
                            f"({exc})") from None
        return Scoring(f"regex:{arg}", lambda _f, _r, res: float(
            pattern.search(res.text) is not None))
    raise EvalError(f"evaluate: unknown score {shorten(spec, 60)!r}; known: exact:FIELD, "
                    f"contains:FIELD, regex:PATTERN, json, a callable (row, result) -> "
                    f"float, judge('provider[:model]', rubric)")


def _answer_of(result: Result, field: str) -> Any:
    """The answer as compared with a row's ``field``: the data's field when it has one."""
    data = result.data
    if isinstance(data, Mapping) and field in data:
        return data[field]
    if data is not None and not isinstance(data, Mapping) and hasattr(data, field):
        return getattr(data, field)
    return result.text


def _compare(field: str, exact: bool) -> Callable[[Mapping[str, Any], Any, Result], float]:
    def score(fields: Mapping[str, Any], _row: Any, result: Result) -> float:
        if field not in fields:
            raise ScoreError(f"this row has no field '{field}' to compare with")
        want, got = normalise(fields[field]), normalise(_answer_of(result, field))
        return float(got == want if exact else want in got)
    return score


def _json(schema: Schema | None) -> Callable[[Mapping[str, Any], Any, Result], float]:
    def score(_fields: Mapping[str, Any], _row: Any, result: Result) -> float:
        if schema is not None:  # the cascade validated it: an invalid answer is an error
            return float(result.data is not None)
        try:
            json.loads(result.text)
        except ValueError:
            return 0.0
        return 1.0
    return score


def _call(fn: Callable[..., Any]) -> Callable[[Mapping[str, Any], Any, Result], float]:
    def score(_fields: Mapping[str, Any], row: Any, result: Result) -> float:
        try:
            value = fn(row, result)
        except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
            raise ScoreError(f"{type(exc).__name__}: {shorten(str(exc), 160)}") from None
        return _unit(value, getattr(fn, "__name__", "score"))
    return score


def _unit(value: Any, who: str) -> float:
    """``value`` as a score in [0, 1], or ScoreError naming ``who`` gave what."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise ScoreError(f"{who} gave {shorten(repr(value), 60)}, not a number in [0, 1]")


def _short(value: Any) -> Any:
    try:
        value = jsonable(value)
    except NotShowable:
        value = str(value)
    return shorten(value, 400) if isinstance(value, str) else value
