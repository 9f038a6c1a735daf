"""``%llm eval``: a thin line over ``timmy_magic.evaluate`` for a DataFrame (or a list of
rows) in the kernel.

    %llm eval df "Q: {question}\\nA:" -p a,b -m x,y --score exact:answer [-o ev]

Targets: ``-p a,b`` (each may be ``provider:model``), ``-m x,y`` for models of one
provider (``-p a -m x,y``: a:x and a:y; ``-p a,b -m x``: both with x; ``-p a,b -m x,y``:
a:x and b:y). The line is one line: ``\\n`` in TEMPLATE is a new line (``\\t`` a tab), as
in a Python string. ``--score`` is a score as ``evaluate`` takes it, or the name of a variable
holding a function or a ``judge(...)``; ``--schema`` names a variable. User mistakes
raise IPython's ``UsageError`` (one line, no traceback).
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

from timmy_magic.evals import EvalError, Judge
from timmy_magic.model.errors import TimmyError
from timmy_magic.notebook.args import UsageParser, own_line_args
from timmy_magic.notebook.runs import run_evaluation

USAGE = ('%llm eval ROWS "TEMPLATE" -p A,B [-m X,Y] [--score SCORE] [--system TEXT] '
         "[--schema VAR] [-c N] [--max-tokens N] [-t TEMP] [-o VAR] [--bg] [--export DIR | "
         "--results DIR] [--cache | --no-cache]")
SCORES = ("exact", "contains", "regex", "json")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected names like A,B")
    return names


def make_parser() -> UsageParser:
    p = UsageParser(prog="%llm eval", usage=USAGE.replace("%", "%%"), description=(
        "Ask every target every row of ROWS (a DataFrame or list of rows in the kernel), "
        "score the answers, and show the summary by target with a chart of score against "
        "cost and latency."))
    p.add_argument("rows", metavar="ROWS", help="a variable: a DataFrame or a list of rows")
    p.add_argument("template", metavar="TEMPLATE", help="the prompt, {field} from each row")
    p.add_argument("-p", "--providers", type=_names, required=True,
                   help="providers (or provider:model targets), A,B,...")
    p.add_argument("-m", "--models", type=_names, help="models, X,Y,...")
    p.add_argument("--score", help="exact:FIELD, contains:FIELD, regex:PATTERN, json, or a "
                                   "variable holding a function or judge(...)")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--schema", metavar="VAR", help="a variable: pydantic class or JSON schema")
    p.add_argument("-c", "--concurrency", type=int, default=8, help="default 8")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("-t", "--temperature", type=float)
    p.add_argument("-o", "--output", metavar="VAR", help="store the Evaluation in VAR")
    p.add_argument("--bg", action="store_true", help="run in the background: VAR (and the "
                   "cell's Out) is a Job at once; %%llm jobs, %%llm cancel")
    files = p.add_mutually_exclusive_group()
    files.add_argument("--export", metavar="DIR", help="write batch JSONL, send nothing")
    files.add_argument("--results", metavar="DIR", help="read the batch output back")
    p.add_argument("--cache", dest="cache", action="store_const", const=True, default=None)
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False)
    return p


def targets_of(providers: list[str], models: list[str] | None) -> list[str]:
    """The targets ``-p`` and ``-m`` name (see the module's doc)."""
    if not models:
        return providers
    if any(":" in p for p in providers):
        raise UsageError("%llm eval: -m with a provider:model target in -p: write every "
                         "target in -p, or the models in -m")
    if len(providers) == 1:
        return [f"{providers[0]}:{m}" for m in models]
    if len(models) == 1:
        return [f"{p}:{models[0]}" for p in providers]
    if len(models) == len(providers):
        return [f"{p}:{m}" for p, m in zip(providers, models)]
    raise UsageError(f"%llm eval: {len(providers)} providers and {len(models)} models: give "
                     "one provider, one model, or as many of each (paired in order)")


def one_line(template: str) -> str:
    """TEMPLATE as written on one line: ``\\n`` a new line, ``\\t`` a tab."""
    return template.replace("\\n", "\n").replace("\\t", "\t")


def _variable(ns: dict[str, Any], name: str, what: str) -> Any:
    if not name.isidentifier() or name not in ns:
        raise UsageError(f"%llm eval: {what} {name!r} is not a variable of the kernel")
    return ns[name]


def _score(ns: dict[str, Any], spec: str | None) -> Any:
    if spec is None or spec.partition(":")[0] in SCORES:
        return spec
    if spec.isidentifier() and spec in ns:
        value = ns[spec]
        if isinstance(value, Judge) or callable(value):
            return value
        raise UsageError(f"%llm eval: --score {spec}: the variable holds a "
                         f"{type(value).__name__}, not a function or judge(...)")
    return spec  # evaluate names the known scores


def eval_line(session: Any, line: str) -> Any:
    """Run ``%llm eval`` with the arguments in ``line`` (``eval`` itself may lead)."""
    args = own_line_args("eval", line, make_parser())
    if args is None:
        return None
    ns = session.shell.user_ns
    rows = _variable(ns, args.rows, "ROWS")
    schema = _variable(ns, args.schema, "--schema") if args.schema else None
    try:
        result = run_evaluation(
            session, session.router, rows, one_line(args.template),
            targets_of(args.providers, args.models), _score(ns, args.score),
            system=args.system, schema=schema, concurrency=args.concurrency,
            max_tokens=args.max_tokens, temperature=args.temperature, export=args.export,
            results=args.results, cache=args.cache, background=args.bg, var=args.output)
    except EvalError as exc:
        raise UsageError(f"%llm eval: {str(exc).removeprefix('evaluate: ')}") from None
    except TimmyError as exc:
        raise UsageError(f"%llm eval: {exc}") from None
    if args.output:
        ns[args.output] = result
    return result
