"""``%llm bench``: parse the line, run ``bench.run`` with the notebook's progress display
(a bar that leaves one line of text, or a terminal line), store and export the result.

    %llm bench [-p A,B] [-c 1,4,16] [-n N] [--max-tokens T] [--prompt TEXT | --prompts FILE]
               [--warmup K] [-m MODEL] [-t TEMP] [-o VAR] [--csv PATH] [--json PATH]

User mistakes raise IPython's ``UsageError`` (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Protocol

from IPython.core.error import UsageError

from timmy_magic.bench import run
from timmy_magic.bench.report import BenchResult
from timmy_magic.bench.runner import DEFAULT_PROMPT
from timmy_magic.model.errors import TimmyError
from timmy_magic.notebook.args import UsageParser, own_line_args
from timmy_magic.notebook.display.progress import make_progress

USAGE = ("%llm bench [-p A,B] [-c 1,4,16] [-n N] [--max-tokens T] "
         "[--prompt TEXT | --prompts FILE] [--warmup K] [-m MODEL] [-t TEMP] [-o VAR] "
         "[--csv PATH] [--json PATH]")


class Extension(Protocol):
    """What ``bench_line`` needs from the extension object."""

    router: Any
    shell: Any


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4,16, got {text!r}")
    return values


def _integer(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected provider names like A,B")
    return names


def make_parser() -> UsageParser:
    description = (
        "Benchmark providers on the same prompts at each concurrency level (closed loop) "
        "and show TTFT, TPOT, ITL, E2E and throughput as vLLM's benchmark_serving defines "
        "them. Without -p: every healthy provider.")
    # argparse formats the usage with %(prog)s: the "%" of "%llm" is doubled
    p = UsageParser(prog="%llm bench", usage=USAGE.replace("%", "%%"), description=description)
    p.add_argument("-p", "--providers", type=_names, help="providers to compare, A,B,...")
    p.add_argument("-c", "--concurrency", type=_positive_ints, default=[1],
                   help="concurrency levels, e.g. 1,4,16 (default 1)")
    p.add_argument("-n", type=_integer(1), default=8,
                   help="requests per level (at least the concurrency; default 8)")
    p.add_argument("--max-tokens", type=_integer(1), default=64, help="default 64")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help=f"the prompt (default: text to continue, "
                                      f"{DEFAULT_PROMPT!r})")
    src.add_argument("--prompts", metavar="FILE",
                     help="prompts, one per line (.txt), a JSON list, or JSON lines")
    p.add_argument("--warmup", type=_integer(0), default=1,
                   help="warm-up requests per provider, reported apart (default 1)")
    p.add_argument("-m", "--model", help="model name to request")
    p.add_argument("-t", "--temperature", type=float, help="sampling temperature")
    p.add_argument("-o", "--output", metavar="VAR", help="store the result in VAR")
    p.add_argument("--csv", metavar="PATH", help="write the records as CSV")
    p.add_argument("--json", metavar="PATH", help="write the whole result as JSON")
    return p


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: a JSON list (of strings or {"prompt": ...}), JSON lines, or
    plain text with one prompt per non-blank line."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"%llm bench: cannot read prompts file {path}: "
                         f"{exc.strerror or exc}") from None
    try:
        if file.suffix == ".json":
            items: list[Any] = json.loads(text)
            if not isinstance(items, list):
                raise ValueError("a JSON prompts file must hold a list")
        elif file.suffix == ".jsonl":
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        else:
            items = [ln for ln in text.splitlines() if ln.strip()]
        prompts = [i["prompt"] if isinstance(i, dict) else i for i in items]
        if not prompts or not all(isinstance(x, str) and x.strip() for x in prompts):
            raise ValueError("expected non-empty prompt strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"%llm bench: bad prompts file {path}: {exc}") from None
    return prompts


def _check_writable(path: str | None, flag: str) -> None:
    if path and not Path(path).expanduser().resolve().parent.is_dir():
        raise UsageError(f"%llm bench: {flag} {path}: the folder does not exist")


def bench_line(ext: Extension, line: str) -> BenchResult | None:
    """Run ``%llm bench`` with the arguments in ``line`` (``bench`` itself may lead)."""
    args = own_line_args("bench", line, make_parser())
    if args is None:
        return None
    _check_writable(args.csv, "--csv")
    _check_writable(args.json, "--json")
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt or DEFAULT_PROMPT]
    try:
        result = run(ext.router, providers=args.providers, concurrency=args.concurrency,
                     n=args.n, max_tokens=args.max_tokens, prompts=prompts,
                     warmup=args.warmup, model=args.model, temperature=args.temperature,
                     progress=make_progress("bench", ext.shell, leave_line=True))
    except (TimmyError, ValueError) as exc:
        raise UsageError(f"%llm bench: {exc}") from None
    if args.output:
        ext.shell.user_ns[args.output] = result
    if args.csv:
        result.to_csv(Path(args.csv).expanduser())
    if args.json:
        result.to_json(Path(args.json).expanduser())
    return result
