"""The result of an evaluation: one ``Answer`` per (row, target), the tidy table
(``to_pandas``), the summary by target (``summary``, from ``figures``) and the provider
order it supports (``cascade``, in ``advice``). Pure data: how it is shown in a notebook
is the notebook layer's (``timmy_magic.notebook.display.eval_view``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from timmy_magic.batch import NOT_RUN
from timmy_magic.evals.figures import Figures, figures, score_text
from timmy_magic.evals.targets import Target
from timmy_magic.model.chat import Result
from timmy_magic.model.schema import Schema
from timmy_magic.model.values import NotShowable, jsonable
from timmy_magic.text.markup import count, plain

COLUMNS = ("row", "target", "provider", "model", "text", "data", "score", "error",
           "latency_s", "ttft_s", "output_tokens", "cost_usd", "cached")
"""The tidy table's columns, in order: one line per (row, target)."""


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``evaluate``: the finished answers are kept in ``.result`` (and in
    ``timmy_magic.last()`` when the extension is loaded). Shown as one line."""

    def __init__(self, message: str, result: Evaluation) -> None:
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [f"EvalInterrupted: {self}"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One row asked of one target: its Result, score (None: not scored, or its score
    failed: ``score_error``) and cost (the judge's apart)."""

    row: int
    target: Target
    result: Result
    score: float | None = None
    score_error: str | None = None
    cost_usd: float = 0.0
    judge_cost_usd: float = 0.0
    judge_reason: str | None = None

    @property
    def asked(self) -> bool:
        """False for a row an interrupt stopped before it was asked."""
        return self.result.error != NOT_RUN

    @property
    def error(self) -> str | None:
        """Why there is no answer, or why its score failed."""
        if self.result.error:
            return self.result.error
        return f"score: {self.score_error}" if self.score_error else None


@dataclass
class Evaluation:
    """Every target's answer to every row, scored. ``answers`` are row-major: row ``i``
    asked of target ``k`` is ``answers[i * len(targets) + k]``."""

    rows: list[Any]
    targets: tuple[Target, ...]
    answers: list[Answer]
    score_name: str | None = None
    """How the answers were scored (``exact:answer``, ``judge:openai``...); None: not."""
    schema: Schema | None = None
    index: Any = None
    """The DataFrame's index when the rows came from one."""
    elapsed_s: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.answers)

    def __iter__(self) -> Iterator[Answer]:
        return iter(self.answers)

    def of(self, target: str | Target) -> list[Answer]:
        """The answers of one target (by label, ``provider:model``), in row order."""
        t = Target.of(target)
        if t not in self.targets:
            raise KeyError(f"no target {t.label!r}; targets: "
                           f"{', '.join(x.label for x in self.targets)}")
        return [a for a in self.answers if a.target == t]

    @property
    def scored(self) -> bool:
        return self.score_name is not None

    def row_label(self, i: int) -> Any:
        """Row ``i`` as the rows name it: its DataFrame index, else its position."""
        if self.index is not None:
            try:
                value = self.index[i]
            except (IndexError, KeyError, TypeError):
                return i
            return value.item() if hasattr(value, "item") else value
        return i

    def figures(self) -> list[Figures]:
        """One line of figures per target, in the order given."""
        return [self._figures(t) for t in self.targets]

    def _figures(self, t: Target) -> Figures:
        mine = [a for a in self.answers if a.target == t and a.asked]
        answered = [a for a in mine if a.result.ok]
        scores = [0.0 if not a.result.ok else a.score for a in mine
                  if not a.result.ok or a.score is not None]
        latencies = [a.result.timings.total_s for a in answered
                     if a.result.timings.total_s > 0]
        rates = [r for a in answered if (r := a.result.timings.output_tokens_per_s)]
        return figures(t.label, len(mine), len(mine) - len(answered),
                       [s for s in scores if s is not None], latencies, rates,
                       sum(a.cost_usd for a in mine), sum(a.judge_cost_usd for a in mine),
                       scored=self.scored)

    def to_pandas(self) -> Any:
        """The tidy table: one line per (row, target), the columns of ``COLUMNS``: ``row``
        is the row's DataFrame index (else its position); ``score`` is 0 for a row with no
        answer (as the summary counts it) and None when nothing was scored or the score
        itself failed (``error`` says why); ``data`` the validated answer as JSON values
        with a schema; ``latency_s`` None for an answer read from a batch file."""
        import pandas as pd

        return pd.DataFrame.from_records([self._record(a) for a in self.answers],
                                         columns=list(COLUMNS))

    def _record(self, a: Answer) -> dict[str, Any]:
        r = a.result
        return {"row": self.row_label(a.row), "target": a.target.label,
                "provider": a.target.provider, "model": r.model or a.target.model,
                "text": r.text if r.ok else None, "data": _data(r, self.schema),
                "score": a.score if r.ok else (0.0 if self.scored and a.asked else None),
                "error": a.error,
                "latency_s": r.timings.total_s if r.ok and r.timings.total_s > 0 else None,
                "ttft_s": r.timings.ttft_s if r.ok else None,
                "output_tokens": r.usage.output_tokens if r.ok else None,
                "cost_usd": a.cost_usd, "cached": r.cached}

    def summary(self) -> Any:
        """A DataFrame indexed by target: ``score_mean`` and its 95% interval
        (``score_low``, ``score_high``), ``rows``, ``errors``, ``latency_p50_s``,
        ``latency_p95_s``, ``tokens_per_s``, ``cost_usd`` (total), ``cost_per_1k_rows``
        and ``judge_cost_usd`` (what grading cost, apart)."""
        import pandas as pd

        lines = self.figures()
        frame = pd.DataFrame([f.fields() for f in lines],
                             index=pd.Index([f.target for f in lines], name="target"))
        return frame.astype({c: int if c in ("rows", "errors") else float
                             for c in frame.columns})  # None as NaN: numbers throughout

    def cascade(self, min_score: float | None = None) -> Any:
        """The provider order this evidence supports, as a providers.yaml snippet: the
        targets meeting ``min_score``, cheapest then fastest first (see
        ``timmy_magic.evals.advice``)."""
        from timmy_magic.evals.advice import advise

        return advise(self, min_score)

    def headline(self) -> str:
        """One line: rows, targets, how scored, errors, answers from the cache (no time:
        the same evaluation replayed reads the same; ``elapsed_s`` has it)."""
        n_rows = len(self.rows)
        errors = sum(a.asked and not a.result.ok for a in self.answers)
        parts = [f"{count(n_rows, 'row')} × {count(len(self.targets), 'target')}"]
        if self.score_name:
            parts.append(f"scored {self.score_name}")
        if errors:
            parts.append(count(errors, "error"))
        cached = sum(a.result.cached for a in self.answers)
        if cached:
            parts.append(f"{cached} from the cache")
        if self.interrupted:
            parts.append("interrupted")
        return " · ".join(parts)

    def text_table(self) -> str:
        """The summary as plain text: what a terminal shows."""
        head = ("target", "score [95%]", "errors", "p50 s", "p95 s", "tok/s", "$/1k rows")
        lines = [head] + [_text_line(f, self.scored) for f in self.figures()]
        widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
               for line in lines]
        return plain(self.headline()) + "\n" + "\n".join(out)

    def __repr__(self) -> str:
        return self.text_table()


def _text_line(f: Figures, scored: bool) -> tuple[str, ...]:
    return (plain(f.target), score_text(f) if scored else "-", str(f.errors),
            _num(f.latency_p50_s, 2), _num(f.latency_p95_s, 2), _num(f.tokens_per_s, 1),
            _money(f.cost_per_1k_rows))


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _money(x: float | None) -> str:
    return "-" if x is None else f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def _data(r: Result, schema: Schema | None) -> Any:
    if schema is None or not r.ok or r.data is None:
        return None
    try:
        return jsonable(r.data)
    except NotShowable:
        return r.text
