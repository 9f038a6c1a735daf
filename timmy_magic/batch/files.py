"""Batch files: a map written as OpenAI batch JSONL instead of sent (what vLLM's
``run-batch`` and the OpenAI Batch API read), and their output read back into a
``MapResult`` (``map_results``), checked as the wire checks a live answer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy_magic.batch.rows import MapError, MapJob, MapResult, RowError, failed, records
from timmy_magic.model.chat import ChatRequest, Message, Result, RouteTrace, Timings, Usage
from timmy_magic.model.errors import InvalidRequest, clean_message
from timmy_magic.model.prompting import with_instruction
from timmy_magic.model.schema import Schema
from timmy_magic.model.template import InterpolationError
from timmy_magic.providers.wire import WireError, content_text, fix_surrogates, model_name
from timmy_magic.text.markup import count, shorten

if TYPE_CHECKING:
    from timmy_magic.routing.router import Router


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


def export(router: Router, job: MapJob, path: Path) -> BatchFile:
    """Write the requests of ``job`` to ``path`` (atomically: a failure leaves the old
    file whole) and send nothing. A row that cannot fill the template is skipped and
    named in ``BatchFile.skipped``. The model is ``job.model``, else the default model of
    ``job.provider`` in the router's config."""
    model = job.model
    if job.provider is not None:
        cfg = router.provider(job.provider).cfg  # UnknownProvider names the others
        model = model if model is not None else cfg.default_model
    if not model:
        raise MapError("map: export needs the model the batch will run on: pass model= "
                       "(or provider= whose config names a default model)")
    skipped: list[RowError] = []
    lines: list[str] = []
    for i, row in enumerate(job.items):
        try:
            req = job.request(row)
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
    items, index = records(rows) if rows is not None else ([], None)
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
    results = [found.get(i) or failed("no result for this row in the file")
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
        return failed(f"batch error: {shorten(clean_message(why or f'HTTP {status}'), 200)}")
    choices = body.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices \
        and isinstance(choices[0], dict) else None
    try:
        text = fix_surrogates(content_text(message.get("content"))) \
            if isinstance(message, dict) else None
    except WireError:
        text = None
    if not isinstance(text, str):
        return failed("batch result without choices[0].message.content text")
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


