"""The rows of a map: reading them (dicts, objects or a DataFrame), the job they make with
a template (checked before anything is sent), one request per row, and the result
(``MapResult``: one ``Result`` per row, in input order)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage
from timmy_magic.model.errors import InvalidRequest, TimmyError
from timmy_magic.model.schema import Schema
from timmy_magic.model.template import InterpolationError, interpolate, references
from timmy_magic.model.values import NotShowable, jsonable
from timmy_magic.privacy.masking import mask_secrets
from timmy_magic.text.markup import count, md, plain, shorten

PREVIEW_ROWS = 10
"""Rows shown in a MapResult's table (all are in ``.results``)."""


class MapError(TimmyError, ValueError):
    """The map cannot start (a bad template, no rows, a bad option); one line."""


class MapInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``map``: the finished rows are kept in ``.result`` (and in
    ``timmy_magic.last()`` when the extension is loaded). Shown as one line."""

    def __init__(self, message: str, result: MapResult) -> None:
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [f"MapInterrupted: {self}"]


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that got no valid answer, and why."""

    index: int
    row: Any
    error: str


@dataclass
class MapResult:
    """One Result per input row, in input order."""

    rows: list[Any]
    results: list[Result]
    schema: Schema | None = None
    index: Any = None
    """The DataFrame's index when the rows came from one (``to_pandas`` keeps it)."""
    elapsed_s: float = 0.0
    interrupted: bool = False

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, i: int) -> Result:
        return self.results[i]

    @property
    def data(self) -> list[Any]:
        """Per row: the validated object (with a schema) or the answer's text; None for a
        row that failed."""
        if self.schema is not None:
            return [r.data if r.ok else None for r in self.results]
        return [r.text if r.ok else None for r in self.results]

    @property
    def errors(self) -> list[RowError]:
        return [RowError(i, self.rows[i], r.error or "")
                for i, r in enumerate(self.results) if not r.ok]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_pandas(self) -> Any:
        """One row per input: its columns, then the answer (``answer``) or the data's
        fields, then ``provider``, ``model``, ``ttft_s``, ``cached`` and ``error``. Nothing
        is written over: a data field named as an input column is ``answer_<field>``, a
        figure named as either is ``timmy_<name>``."""
        import pandas as pd

        table = []
        for row, res in zip(self.rows, self.results, strict=False):
            rec = dict(_fields(row))
            if self.schema is None:
                _put(rec, "answer", res.text if res.ok else None)
            else:
                try:
                    value = jsonable(res.data) if res.ok else None
                except NotShowable:
                    value = res.text  # the data cannot be turned into values: its text
                if isinstance(value, dict):
                    for k, v in value.items():
                        _put(rec, str(k), v)
                else:
                    _put(rec, "answer", value)
            for k, v in (("provider", res.provider), ("model", res.model),
                         ("ttft_s", res.timings.ttft_s), ("cached", res.cached),
                         ("error", res.error)):
                _put(rec, k, v, prefix="timmy_")
            table.append(rec)
        return pd.DataFrame.from_records(table, index=self.index)

    def summary(self) -> str:
        """One line: rows, answered, errors, providers, time, rows/s."""
        done = sum(r.ok for r in self.results)
        by: dict[str, int] = {}
        for r in self.results:
            if r.ok and r.provider:
                by[r.provider] = by.get(r.provider, 0) + 1
        cached = sum(r.cached for r in self.results)
        parts = [f"{count(len(self.results), 'row')}: {done} answered"]
        if len(self.results) - done:
            parts.append(count(len(self.results) - done, "error"))
        if cached:
            parts.append(f"{cached} from the cache")
        if by:
            parts.append(", ".join(f"{p} {n}" for p, n in sorted(by.items(),
                                                                   key=lambda x: -x[1])))
        if self.elapsed_s > 0:
            parts.append(f"{self.elapsed_s:.1f}s, {len(self.results) / self.elapsed_s:.1f} "
                         "rows/s")
        if self.interrupted:
            parts.append("interrupted")
        return " · ".join(parts)

    def _repr_markdown_(self) -> str:
        head = ["| # | answer | provider | error |", "|---|---|---|---|"]
        for i, r in enumerate(self.results[:PREVIEW_ROWS]):
            shown = _preview(r, self.schema)
            head.append(f"| {i} | {md(shown)} | {md(r.provider or '')} | "
                        f"{md(shorten(r.error or '', 80))} |")
        more = len(self.results) - PREVIEW_ROWS
        tail = f"\n\n*… {more} more rows: `.results`, `.to_pandas()`*" if more > 0 else ""
        return f"*{md(self.summary())}*\n\n" + "\n".join(head) + tail

    def __repr__(self) -> str:
        return f"<MapResult {plain(self.summary())}>"


def _preview(r: Result, schema: Schema | None) -> str:
    if not r.ok:
        return ""
    if schema is not None and r.data is not None:
        try:
            return shorten(json.dumps(jsonable(r.data), ensure_ascii=False), 80)
        except (NotShowable, RecursionError, ValueError):
            pass
    return shorten(r.text, 80)


def failed(error: str, trace: RouteTrace | None = None) -> Result:
    """A row's Result that holds no answer, only why."""
    return Result("", None, None, Usage(), Timings(None, 0.0, None), trace or RouteTrace(),
                  error=error)


# ---------------------------------------------------------------- the job


@dataclass(frozen=True)
class MapJob:
    """A template over rows, checked: what ``run`` sends and ``export`` writes."""

    template: str
    items: list[Any]
    index: Any
    """The DataFrame's index when the rows came from one."""
    schema: Schema | None
    concurrency: int = 8
    provider: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    temperature: float | None = None

    def empty(self) -> MapResult:
        """The result of a job with no rows (nothing to send)."""
        return MapResult([], [], self.schema, self.index)

    def request(self, row: Any) -> ChatRequest:
        """The request of one row; InterpolationError or InvalidRequest when the row
        cannot fill the template (that row is an error, the others go on)."""
        names = namespace(row)
        for ref in references(self.template):
            name = ref.split(".")[0].split("[")[0]
            if name not in names:  # not interpolate's hint, about %%llm braces
                fields = ", ".join(sorted(k for k in names if k != "row")[:12]) or "(none)"
                raise InterpolationError(f"{{{ref}}}: this row has no field '{name}' (its "
                                         f"fields: {fields})")
        # masked as every %%llm prompt is: a key in a row (or the template) never leaves
        prompt = mask_secrets(interpolate(self.template, names).strip())[0]
        if not prompt:
            raise InvalidRequest("the prompt is empty for this row")
        system = mask_secrets(self.system)[0] if self.system else None
        messages = ((Message("system", system),) if system else ()) + (
            Message("user", prompt),)
        return ChatRequest(messages, self.model, self.temperature, self.max_tokens,
                           self.provider, self.schema)


def plan(template: str, rows: Any, *, schema: Any = None, provider: str | None = None,
         model: str | None = None, concurrency: int = 8, max_tokens: int | None = None,
         system: str | None = None, temperature: float | None = None) -> MapJob:
    """The job of ``template`` over ``rows``, or a MapError saying what is wrong with it
    (before anything is sent): rows that are no rows, a bad option, a template reference
    no row can fill."""
    items, index = records(rows)
    _check_options(concurrency, max_tokens, temperature)
    spec = Schema.of(schema) if schema is not None else None
    if items:
        _check_template(template, items)
    return MapJob(template, items, index, spec, concurrency, provider, model, max_tokens,
                  system, temperature)


def _check_options(concurrency: int, max_tokens: int | None,
                   temperature: float | None) -> None:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise MapError(f"map: concurrency must be a whole number of at least 1, not "
                       f"{concurrency!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise MapError(f"map: max_tokens must be at least 1, not {max_tokens!r}")
    if temperature is not None and not (isinstance(temperature, (int, float))
                                        and math.isfinite(temperature) and temperature >= 0):
        raise MapError(f"map: temperature must be a finite number ≥ 0, not {temperature!r}")


def _check_template(template: str, rows: list[Any]) -> None:
    """A reference no row can fill is a mistake in the template, said before anything is
    sent (a reference some rows lack makes only those rows errors)."""
    if not isinstance(template, str) or not template.strip():
        raise MapError("map: the template is empty")
    names = {ref.split(".")[0].split("[")[0] for ref in references(template)}
    known = set().union(*(namespace(r).keys() for r in rows[:100])) if rows else set()
    missing = sorted(names - known)
    if missing:
        cols = ", ".join(sorted(known - {"row"})[:12]) or "(none)"
        raise MapError(f"map: {{{missing[0]}}} in the template is not a field of the rows "
                       f"(fields: {cols}; {{row}} is the whole row)")


# ---------------------------------------------------------------- reading rows


def records(rows: Any) -> tuple[list[Any], Any]:
    """(rows as a list, the DataFrame index or None). A DataFrame is recognised without
    importing pandas (``to_dict`` and ``columns``), its rows become dicts."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "index"):
        return list(rows.to_dict("records")), rows.index
    if isinstance(rows, (str, bytes, Mapping)):
        raise MapError(f"map: rows must be an iterable of rows (dicts or objects) or a "
                       f"DataFrame, not one {type(rows).__name__}")
    if not isinstance(rows, Iterable):
        raise MapError(f"map: rows must be an iterable or a DataFrame, not "
                       f"{type(rows).__name__}")
    try:
        return list(rows), None
    except Exception as exc:  # noqa: BLE001 - a generator of the user's may raise anything
        raise MapError(f"map: reading the rows raised {type(exc).__name__}: "
                       f"{shorten(str(exc), 200)} (nothing was sent)") from None


def _put(rec: dict[str, Any], key: str, value: Any, prefix: str = "answer_") -> None:
    """``rec[key] = value``, or under ``prefix + key`` (then more ``_``) if that is taken."""
    while key in rec:
        key = prefix + key
    rec[key] = value


def _fields(row: Any) -> Mapping[str, Any]:
    """A row as a namespace: a dict as it is, an object by its attributes (dataclass,
    named tuple, plain object); ``row`` names the row itself."""
    try:
        if isinstance(row, Mapping):
            return row
        if dataclasses.is_dataclass(row) and not isinstance(row, type):
            return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
        if isinstance(row, tuple) and hasattr(row, "_asdict"):  # a named tuple
            return dict(row._asdict())
        if hasattr(row, "__dict__"):
            return {k: v for k, v in vars(row).items() if not k.startswith("_")}
    except Exception:  # noqa: BLE001, S110 - a row's own lookups may raise anything: it
        pass           # has no fields then, and a template reference to one makes it an error row
    return {}


def namespace(row: Any) -> Mapping[str, Any]:
    return {**{str(k): v for k, v in _fields(row).items()}, "row": row}
