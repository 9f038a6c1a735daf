"""Evaluating providers on the user's own rows: which is good enough, fast enough and
cheapest (``timmy_magic.evaluate``).

    ev = timmy_magic.evaluate(df, "Q: {question}\\nA:", ["local-gemma", "openai:gpt-4o-mini"],
                              score="exact:answer")
    ev.summary()           # score_mean and its 95% interval, errors, latency, cost by target
    ev.cascade(min_score=0.8)   # the providers.yaml priority order this supports

Every target asks every row (``run``, over ``timmy_magic.batch``'s pool: the cascade, the
answer cache per (row, target), Ctrl-C keeping what finished); the answers are scored
(``scores``: exact, contains, regex, json, a function, or a ``judge`` model) and summed up
per target (``figures``) into an ``Evaluation`` (``evaluation``), whose ``cascade`` is
``advice``. ``files``: the same over batch JSONL, past one machine. This package knows no
notebook (``timmy_magic.evaluate`` in ``timmy_magic.notebook.api`` finds the session's
router and cache; ``notebook/display/eval_view.py`` draws the summary and its chart).
"""

from __future__ import annotations

from timmy_magic.evals.advice import CascadeAdvice, Place
from timmy_magic.evals.evaluation import COLUMNS, Answer, EvalInterrupted, Evaluation
from timmy_magic.evals.figures import Figures
from timmy_magic.evals.files import EvalExport, export_eval, read_results
from timmy_magic.evals.run import EvalJob, plan_eval, run_eval, start_eval
from timmy_magic.evals.scores import Judge, judge, normalise
from timmy_magic.evals.targets import EvalError, Target, targets_of

__all__ = [
    "COLUMNS",
    "Answer",
    "CascadeAdvice",
    "EvalError",
    "EvalExport",
    "EvalInterrupted",
    "EvalJob",
    "Evaluation",
    "Figures",
    "Judge",
    "Place",
    "Target",
    "export_eval",
    "judge",
    "normalise",
    "plan_eval",
    "read_results",
    "run_eval",
    "start_eval",
    "targets_of",
]
