"""``timmy_magic.map``: one prompt template over many rows, through the cascade.

    res = timmy_magic.map("Classify: {review}", df, schema=Label, concurrency=8)
    res.to_pandas()

Each row fills the template (``{column}`` from the row, or ``{row[...]}``, escape-safe as in
``%%llm``) and becomes one request; at most ``concurrency`` are in flight on the router's
loop, so failover, breakers, the budget and the cloud gate apply to every row, and the
cascade spreads them over replicas (least outstanding first). A failed row is kept as an
error and never stops the others. Ctrl-C cancels what is in flight and keeps the finished
rows (``timmy_magic.last()`` or the exception's ``.result``). With the extension loaded,
the answer cache applies per row: a re-run sends only the rows not yet answered.

Bigger than one kernel: ``export=`` writes the requests as OpenAI batch JSONL (what
vLLM's ``run-batch`` and the OpenAI Batch API read) and sends nothing;
``map_results(path)`` reads their output back into a ``MapResult``.

Where things happen: the requests run on the router's loop thread; the kernel's thread
waits in short steps (so an interrupt lands), draws the progress, and reads and writes the
answer cache (SQLite stays off the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy_magic.model.errors import InvalidRequest, RoutingError, TimmyError, clean_message
from timmy_magic.model.template import InterpolationError, interpolate, references
from timmy_magic.text.markup import count, md, plain
from timmy_magic.text.markup import shorten as _cut
from timmy_magic.privacy.masking import mask_secrets
from timmy_magic.providers.wire import WireError, content_text, fix_surrogates, model_name
from timmy_magic.model.prompting import with_instruction
from timmy_magic.model.schema import Schema
from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage

if TYPE_CHECKING:
    from timmy_magic.routing.router import Router

PREVIEW_ROWS = 10
"""Rows shown in a MapResult's table (all are in ``.results``)."""
PROGRESS_EVERY = 0.25
"""Seconds between two progress redraws."""
NOT_RUN = "interrupted before it was answered"
CLEANUP_S = 5.0
"""Longest wait, after an interrupt, for the cancelled requests to settle."""


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

        from timmy_magic.notebook.render import NotShowable, jsonable

        records = []
        for row, res in zip(self.rows, self.results):
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
            records.append(rec)
        return pd.DataFrame.from_records(records, index=self.index)

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
                        f"{md(_cut(r.error or '', 80))} |")
        more = len(self.results) - PREVIEW_ROWS
        tail = f"\n\n*… {more} more rows: `.results`, `.to_pandas()`*" if more > 0 else ""
        return f"*{md(self.summary())}*\n\n" + "\n".join(head) + tail

    def __repr__(self) -> str:
        return f"<MapResult {plain(self.summary())}>"


# ---------------------------------------------------------------- the rows


def _put(rec: dict[str, Any], key: str, value: Any, prefix: str = "answer_") -> None:
    """``rec[key] = value``, or under ``prefix + key`` (then more ``_``) if that is taken."""
    while key in rec:
        key = prefix + key
    rec[key] = value


def _records(rows: Any) -> tuple[list[Any], Any]:
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
    except Exception as exc:  # a generator of the user's may raise anything
        raise MapError(f"map: reading the rows raised {type(exc).__name__}: "
                       f"{_cut(str(exc), 200)} (nothing was sent)") from None


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
    except Exception:  # noqa: BLE001 - a row's own lookups may raise anything: it has no
        pass           # fields then, and a template reference to one makes it an error row
    return {}


def _namespace(row: Any) -> Mapping[str, Any]:
    return {**{str(k): v for k, v in _fields(row).items()}, "row": row}


def _check_template(template: str, rows: list[Any]) -> None:
    """A reference no row can fill is a mistake in the template, said before anything is
    sent (a reference some rows lack makes only those rows errors)."""
    if not isinstance(template, str) or not template.strip():
        raise MapError("map: the template is empty")
    names = {ref.split(".")[0].split("[")[0] for ref in references(template)}
    known = set().union(*(_namespace(r).keys() for r in rows[:100])) if rows else set()
    missing = sorted(names - known)
    if missing:
        cols = ", ".join(sorted(known - {"row"})[:12]) or "(none)"
        raise MapError(f"map: {{{missing[0]}}} in the template is not a field of the rows "
                       f"(fields: {cols}; {{row}} is the whole row)")


# ---------------------------------------------------------------- running


@dataclass
class _Plan:
    """The requests to send (index -> request) and the rows already settled."""

    requests: dict[int, ChatRequest] = field(default_factory=dict)
    settled: dict[int, Result] = field(default_factory=dict)
    keys: dict[int, Any] = field(default_factory=dict)


def _request(template: str, row: Any, *, system: str | None, model: str | None,
             temperature: float | None, max_tokens: int | None, provider: str | None,
             schema: Schema | None) -> ChatRequest:
    namespace = _namespace(row)
    for ref in references(template):
        name = ref.split(".")[0].split("[")[0]
        if name not in namespace:  # not interpolate's hint, which is about %%llm braces
            fields = ", ".join(sorted(k for k in namespace if k != "row")[:12]) or "(none)"
            raise InterpolationError(f"{{{ref}}}: this row has no field '{name}' (its "
                                     f"fields: {fields})")
    # masked as every %%llm prompt is: a key in a row (or the template) never leaves
    prompt = mask_secrets(interpolate(template, namespace).strip())[0]
    if not prompt:
        raise InvalidRequest("the prompt is empty for this row")
    if system:
        system = mask_secrets(system)[0]
    messages = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
    return ChatRequest(messages, model, temperature, max_tokens, provider, schema)


def _failed(error: str, trace: RouteTrace | None = None) -> Result:
    return Result("", None, None, Usage(), Timings(None, 0.0, None), trace or RouteTrace(),
                  error=error)


async def _run(router: Router, requests: dict[int, ChatRequest], concurrency: int,
               out: queue.SimpleQueue[tuple[int, Result]], finished: threading.Event) -> None:
    """Every request on this loop, at most ``concurrency`` at once; each outcome goes to
    ``out`` as it comes. A row's own failure is its Result; a cancel cancels them all.
    ``finished`` is set once every request has settled (permits, metrics, connections):
    a cancelled concurrent future says done at once, before that."""
    todo = iter(requests.items())

    async def worker() -> None:  # ``concurrency`` of these: memory flat in the rows
        for i, req in todo:
            try:
                res = await router.acomplete(req)
            except RoutingError as exc:
                res = _failed(str(exc), exc.trace)
            except TimmyError as exc:
                res = _failed(str(exc))
            out.put((i, res))

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(requests)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        finished.set()


def map(template: str, rows: Any, *, schema: Any = None, provider: str | None = None,
        model: str | None = None, concurrency: int = 8, max_tokens: int | None = None,
        system: str | None = None, temperature: float | None = None,
        export: str | Path | None = None, cache: bool | None = None,
        progress: bool = True, router: Router | None = None) -> Any:
    """Ask ``template`` filled from each of ``rows`` (dicts, objects or a DataFrame) and
    return a ``MapResult`` in input order (see the module's doc). ``schema``: a pydantic
    class or JSON-schema dict each answer must match (``.data``). ``export``: write the
    requests as OpenAI batch JSONL instead and return a ``BatchFile``. ``cache``: as
    ``--cache`` / ``--no-cache`` (None: the session's cache mode). ``router``: default, the
    extension's."""
    items, index = _records(rows)
    _check_options(concurrency, max_tokens, temperature)
    spec = Schema.of(schema) if schema is not None else None
    if not items:
        return MapResult([], [], spec, index)
    _check_template(template, items)
    build = dict(system=system, model=model, temperature=temperature,
                 max_tokens=max_tokens, provider=provider, schema=spec)
    ext, router = _surface(router)
    if provider is not None:
        router.provider(provider)  # UnknownProvider names the others
    if export is not None:
        return _export(Path(export), template, items, router, build)
    plan = _Plan()
    answers = ext.answers if ext is not None else None
    fmt = "json" if spec is not None else "markdown"
    for i, row in enumerate(items):
        try:
            req = _request(template, row, **build)  # type: ignore[arg-type]
        except (InterpolationError, InvalidRequest) as exc:
            plan.settled[i] = _failed(str(exc))
            continue
        if answers is not None:
            fields, mode = answers.fields(req, fmt, cache)
            try:
                hit = answers.lookup(fields, mode, spec)
            except TimmyError as exc:  # a replay miss: nothing is sent for this row
                plan.settled[i] = _failed(str(exc).splitlines()[0])
                continue
            if hit is not None:
                plan.settled[i] = hit
                continue
            plan.keys[i] = (fields, mode)
        plan.requests[i] = req
    result = _gather(router, items, index, spec, plan, concurrency,
                     _progress(len(items)) if progress else None, answers)
    if ext is not None:
        ext.last_result = result
    if result.interrupted:
        raise MapInterrupted(f"interrupted: {sum(r.ok for r in result.results)} of "
                             f"{len(items)} rows answered, kept: timmy_magic.last()", result)
    return result


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


def _surface(router: Router | None) -> tuple[Any, Router]:
    """(the loaded extension or None, the router to use)."""
    ext = None
    try:
        from timmy_magic.notebook.extension import extension

        ext = extension()
    except (RuntimeError, ImportError):
        pass
    if router is not None:
        return (ext if ext is not None and ext.router is router else None), router
    if ext is None:
        raise MapError("map: no router: run %load_ext timmy_magic first, or pass "
                       "router=Router.from_config()")
    return ext, ext.router


def _gather(router: Router, items: list[Any], index: Any, spec: Schema | None,
            plan: _Plan, concurrency: int, bar: _Progress | None,
            answers: Any) -> MapResult:
    results: list[Result | None] = [None] * len(items)
    for i, res in plan.settled.items():
        results[i] = res
    t0 = time.monotonic()
    tokens = 0
    out: queue.SimpleQueue[tuple[int, Result]] = queue.SimpleQueue()
    interrupted = False
    finished = threading.Event()
    ended = threading.Event()  # the run's future is done: every row has been put
    fut: Any = None

    def take(i: int, res: Result) -> None:
        nonlocal tokens
        results[i] = res
        tokens += res.usage.output_tokens or 0
        if answers is not None and res.ok and i in plan.keys:
            fields, mode = plan.keys[i]
            answers.record(fields, res, mode)

    def drain() -> None:
        while True:
            try:
                take(*out.get_nowait())
            except queue.Empty:
                return

    def draw(final: bool = False) -> None:
        if bar is not None:
            done = [r for r in results if r is not None]
            bar.draw(len(done), sum(not r.ok for r in done), tokens,
                     time.monotonic() - t0, final)

    try:  # from before the run starts: a Ctrl-C anywhere from here cancels it
        draw()
        if plan.requests:
            fut = router.submit(_run(router, plan.requests, concurrency, out, finished))
            # Wake every PROGRESS_EVERY, and at once when the run ends: not once per row
            # (each wake-up takes the GIL from the loop thread that runs the requests),
            # and never a poll's worth of waiting after the last row (measured in
            # benchmarks/bench_map.py: up to 0.25 s at the end of every map).
            fut.add_done_callback(lambda _: ended.set())
            while not ended.wait(PROGRESS_EVERY):
                drain()
                draw()
            drain()
            fut.result()  # a bug in the runner surfaces here
    except KeyboardInterrupt:
        interrupted = True
        try:
            if fut is not None:
                fut.cancel()
                finished.wait(CLEANUP_S)  # the requests' clean-up
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, keep what finished
            pass
        drain()
    elapsed = time.monotonic() - t0
    final = [r if r is not None else _failed(NOT_RUN) for r in results]
    try:
        draw(final=True)
    except KeyboardInterrupt:  # the rows are kept all the same
        interrupted = True
    return MapResult(items, final, spec, index, elapsed, interrupted)


# ---------------------------------------------------------------- progress


class _Progress:
    """done/total, errors, tokens/s and ETA: an ipywidgets bar in a notebook, an HTML line
    where widgets are missing, one rewritten line on stderr in a terminal."""

    def __init__(self, total: int, show: Callable[[str, float, bool], None]) -> None:
        self.total = total
        self._show = show
        self._last = (-1, -math.inf)

    def draw(self, done: int, errors: int, tokens: int, elapsed: float,
             final: bool = False) -> None:
        """Redraw when a row finished, once a second otherwise (the ETA), and at the end."""
        if not final and done == self._last[0] and elapsed - self._last[1] < 1.0:
            return
        self._last = (done, elapsed)
        self._show(progress_line(done, self.total, errors, tokens, elapsed, final),
                   done / self.total if self.total else 1.0, final)


def progress_line(done: int, total: int, errors: int, tokens: int, elapsed: float,
                  final: bool = False) -> str:
    """``37/100 rows · 2 errors · 412 tok/s · ETA 0:42`` (pure, for tests)."""
    parts = [f"{done}/{total} rows"]
    if errors:
        parts.append(count(errors, "error"))
    if elapsed > 0 and tokens:
        parts.append(f"{tokens / elapsed:.0f} tok/s")
    if final:
        parts.append(f"{elapsed:.1f}s")
    elif done and done < total:
        left = elapsed / done * (total - done)
        parts.append(f"ETA {int(left // 60)}:{int(left % 60):02d}")
    return " · ".join(parts)


def _progress(total: int) -> _Progress:
    from timmy_magic.notebook.render import display, rich_frontend

    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    if shell is not None and rich_frontend(shell):
        try:
            import ipywidgets as w

            bar = w.IntProgress(value=0, min=0, max=max(total, 1), description="map")
            label = w.HTML()
            box = w.HBox([bar, label])
            display(box)

            def show_widget(line: str, fraction: float, final: bool) -> None:
                bar.value = round(fraction * max(total, 1))
                label.value = f"<span>{md(line)}</span>"
                if final:
                    bar.bar_style = "success"

            return _Progress(total, show_widget)
        except ImportError:
            handle = display({"text/plain": ""}, raw=True, display_id=True)

            def show_html(line: str, fraction: float, final: bool) -> None:
                handle.update({"text/plain": f"map: {line}"}, raw=True)

            return _Progress(total, show_html)

    def show_text(line: str, fraction: float, final: bool) -> None:
        sys.stderr.write(f"\rmap: {line}\033[K" + ("\n" if final else ""))
        sys.stderr.flush()

    return _Progress(total, show_text)


# ---------------------------------------------------------------- batch files


@dataclass(frozen=True)
class BatchFile:
    """Requests written as OpenAI batch JSONL (one ``custom_id`` per row: ``row-<n>``)."""

    path: Path
    rows: int
    model: str
    skipped: tuple[RowError, ...] = ()

    def __repr__(self) -> str:
        skipped = f", {count(len(self.skipped), 'row')} skipped" if self.skipped else ""
        return (f"<BatchFile {self.path} · {count(self.rows, 'request')} for {self.model}"
                f"{skipped}: run it with `vllm run-batch -i {self.path.name} -o "
                f"results.jsonl --model {self.model}` or the OpenAI Batch API, then "
                f"timmy_magic.map_results('results.jsonl')>")


def _export(path: Path, template: str, items: list[Any], router: Router,
            build: dict[str, Any]) -> BatchFile:
    model = build["model"]
    if model is None and build["provider"] is not None:
        model = router.provider(build["provider"]).cfg.default_model
    if not model:
        raise MapError("map: export needs the model the batch will run on: pass model= "
                       "(or provider= whose config names a default model)")
    skipped: list[RowError] = []
    lines: list[str] = []
    for i, row in enumerate(items):
        try:
            req = _request(template, row, **build)
        except (InterpolationError, InvalidRequest) as exc:
            skipped.append(RowError(i, row, str(exc)))
            continue
        lines.append(json.dumps({"custom_id": f"row-{i}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": batch_body(req, model)}, ensure_ascii=False))
    try:
        data = "".join(line + "\n" for line in lines).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in the model name or the schema
        raise MapError(f"map: export: the requests hold text that is not valid Unicode "
                       f"(position {exc.start}); nothing was written") from None
    _write_atomically(path, data)
    return BatchFile(path, len(lines), model, tuple(skipped))


def _write_atomically(path: Path, data: bytes) -> None:
    """Write next to ``path``, then rename over it: a failure leaves the old file whole."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise MapError(f"map: cannot write {_shown_path(path)}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _shown_path(path: Any) -> str:
    return repr(str(path))[1:-1]  # a NUL or a control character shown escaped, one line


def batch_body(req: ChatRequest, model: str) -> dict[str, Any]:
    """One request as the ``body`` of an OpenAI batch line (a chat completion)."""
    messages: Sequence[Message] = req.messages
    if req.schema is not None:
        messages = with_instruction(messages, req.schema)
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": m.role, "content": m.text} for m in messages]}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.schema is not None:
        body["response_format"] = req.schema.response_format()
    return body


MAX_BATCH_ROWS = 1_000_000
"""Most rows a batch result file may name (vLLM's run-batch has no limit; OpenAI's Batch
API takes 50,000 requests per file): a ``row-<n>`` beyond it is a mistake, not a row."""
_CUSTOM_ID = re.compile(r"row-([0-9]{1,9})")


def map_results(path: str | Path, rows: Any = None, *, schema: Any = None) -> MapResult:
    """Read a batch output file (vLLM ``run-batch`` or the OpenAI Batch API: one
    ``{"custom_id", "response": {"status_code", "body"}, "error"}`` per line) into a
    MapResult, rows in ``custom_id`` order (``row-<n>``, as ``map(export=...)`` wrote
    them). ``rows``: the input rows, for ``to_pandas``; ``schema``: validate each answer
    into ``.data``. A row with no line in the file is an error row; a line naming no row
    of ``rows`` (or past ``MAX_BATCH_ROWS``) is a MapError naming the line; of two lines
    for one row, an answer wins over an error. Everything read is checked as the wire
    checks a live answer (text cleaned, model names bounded, keys masked)."""
    spec = Schema.of(schema) if schema is not None else None
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MapError(f"map_results: {p.name} is not UTF-8 text (byte {exc.start})") from None
    except (OSError, ValueError) as exc:
        raise MapError(f"map_results: cannot read {_shown_path(p)}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
    items, index = _records(rows) if rows is not None else ([], None)
    found: dict[int, Result] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        i = _row_of(line, n, p.name)
        if rows is not None and i >= len(items):
            raise MapError(f"map_results: {p.name} line {n}: row-{i}, but only "
                           f"{count(len(items), 'row')} were given")
        got = _batch_result(json.loads(line), spec)
        if i not in found or not found[i].ok:  # an answer is never replaced by an error
            found[i] = got
    if rows is None:
        items = [None] * (max(found) + 1 if found else 0)
    results = [found.get(i) or _failed("no result for this row in the file")
               for i in range(len(items))]
    return MapResult(items, results, spec, index)


def _row_of(line: str, n: int, name: str) -> int:
    """The row a batch line answers (``custom_id`` ``row-<n>``), or a MapError naming it."""
    try:
        obj = json.loads(line)
    except RecursionError:
        raise MapError(f"map_results: {name} line {n} is nested too deeply") from None
    except ValueError:
        obj = None
    cid = obj.get("custom_id") if isinstance(obj, dict) else None
    if type(cid) is int and 0 <= cid:  # a tool that wrote the number alone
        cid = f"row-{cid}"
    m = _CUSTOM_ID.fullmatch(cid) if isinstance(cid, str) else None
    if m is None:
        raise MapError(f"map_results: {name} line {n} is not a batch result with a "
                       f"custom_id row-<n>")
    i = int(m.group(1))
    if i >= MAX_BATCH_ROWS:
        raise MapError(f"map_results: {name} line {n}: row-{i} is past the "
                       f"{MAX_BATCH_ROWS:,} rows a result holds")
    return i


def _batch_result(obj: Mapping[str, Any], spec: Schema | None) -> Result:
    """One checked batch line as a Result: the text cleaned and its model name bounded as
    the wire does for a live answer, an error's words passed through the redactor."""
    error = obj.get("error")
    response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
    body = response.get("body") if isinstance(response, dict) else None
    status = response.get("status_code") if isinstance(response, dict) else None
    if error or not isinstance(body, dict) or (status is not None and status != 200):
        why = error.get("message") if isinstance(error, dict) else error
        if not why and isinstance(body, dict) and isinstance(body.get("error"), dict):
            why = body["error"].get("message")
        return _failed(f"batch error: {_cut(clean_message(why or f'HTTP {status}'), 200)}")
    choices = body.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices \
        and isinstance(choices[0], dict) else None
    try:
        text = fix_surrogates(content_text(message.get("content"))) \
            if isinstance(message, dict) else None
    except WireError:
        text = None
    if not isinstance(text, str):
        return _failed("batch result without choices[0].message.content text")
    raw_usage = body.get("usage")
    usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    try:
        model = model_name(body.get("model"))
    except WireError:
        model = None
    res = Result(text, "batch", model,
                 Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))),
                 Timings(None, 0.0, None), RouteTrace())
    if spec is not None:
        try:
            return dataclasses.replace(res, data=spec.validate(text))
        except ValueError as exc:
            return dataclasses.replace(res, error=str(exc))
    return res


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def _preview(r: Result, schema: Schema | None) -> str:
    if not r.ok:
        return ""
    if schema is not None and r.data is not None:
        from timmy_magic.notebook.render import NotShowable, jsonable

        try:
            return _cut(json.dumps(jsonable(r.data), ensure_ascii=False), 80)
        except (NotShowable, RecursionError, ValueError):
            pass
    return _cut(r.text, 80)
